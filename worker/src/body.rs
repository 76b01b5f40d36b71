//! Reading request bodies with a size limit.
//!
//! An isolate has 128 MB for every request it serves at once, its plan cache and its
//! outbox of unacknowledged events, so no body may be read whole before its size is
//! known: one large enough would take the others down with it. Hence:
//! - a declared `Content-Length` over the limit is refused before anything is read;
//! - a declared length within it is read in one call (the common case, and the
//!   cheapest: one crossing for the whole body). The runtime frames the body by that
//!   length, so no more can arrive; the length is checked again all the same;
//! - a body without a usable `Content-Length` (chunked) is read as a stream, chunk by
//!   chunk, and refused as soon as more than the limit has arrived. What is held is at
//!   most the limit in Wasm plus the one chunk in JS that went over it; the rest of the
//!   body is cancelled, never read.
//!
//! Every refusal is the one `413 body_too_large`, whichever way the size was learnt.

use wasm_bindgen::JsCast;
use worker::wasm_bindgen_futures::JsFuture;

use crate::error::ApiError;

fn unreadable() -> ApiError {
    ApiError::bad_request("bad_body", "the body cannot be read")
}

pub async fn read(req: &web_sys::Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = declared(req, limit)?;
    read_declared(req, declared, limit).await
}

/// The body's declared length (`None`: chunked), refused if over `limit`. Separate
/// from reading so that a caller can refuse an oversized body before it spends
/// anything on it, such as one of its few places for bodies in memory (`push`).
pub fn declared(req: &web_sys::Request, limit: usize) -> Result<Option<usize>, ApiError> {
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.trim().parse::<usize>().ok());
    match declared {
        Some(n) if n > limit => Err(ApiError::too_large(limit)),
        declared => Ok(declared),
    }
}

/// The body, whose length [`declared`] returned.
pub async fn read_declared(req: &web_sys::Request, declared: Option<usize>, limit: usize) -> Result<Vec<u8>, ApiError> {
    match declared {
        Some(_) => whole(req, limit).await,
        None => streamed(req, limit).await,
    }
}

/// The body in one call: only for a declared length within the limit.
async fn whole(req: &web_sys::Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let promise = req.array_buffer().map_err(|_| unreadable())?;
    let buffer = JsFuture::from(promise).await.map_err(|_| unreadable())?;
    let bytes = js_sys::Uint8Array::new(&buffer);
    if bytes.length() as usize > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(bytes.to_vec())
}

/// The body chunk by chunk, refused at the first chunk that takes it over `limit`.
async fn streamed(req: &web_sys::Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let Some(stream) = req.body() else { return Ok(Vec::new()) };
    let reader: web_sys::ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let mut bytes = Vec::new();
    loop {
        let next = JsFuture::from(reader.read()).await.map_err(|_| unreadable())?;
        let next: web_sys::ReadableStreamReadResult = next.unchecked_into();
        if next.get_done().unwrap_or(false) {
            return Ok(bytes);
        }
        let chunk = next.get_value().dyn_into::<js_sys::Uint8Array>().map_err(|_| unreadable())?;
        let len = chunk.length() as usize;
        if len > limit - bytes.len() {
            // Tells the runtime the rest is not wanted; whether it says so gracefully
            // changes nothing for the answer.
            let _ = JsFuture::from(reader.cancel()).await;
            return Err(ApiError::too_large(limit));
        }
        let start = bytes.len();
        grow(&mut bytes, start + len, limit);
        bytes.resize(start + len, 0);
        chunk.copy_to(&mut bytes[start..]);
    }
}

/// Makes room for `len` bytes, doubling as a `Vec` does but never past `limit`, so a
/// body at the limit holds the limit and no more.
fn grow(bytes: &mut Vec<u8>, len: usize, limit: usize) {
    if len > bytes.capacity() {
        let target = len.max(bytes.capacity() * 2).min(limit);
        bytes.reserve_exact(target - bytes.len());
    }
}
