//! Reading request bodies with a size limit.
//!
//! A declared `Content-Length` over the limit is refused before anything is read; a
//! body that turns out larger anyway is refused after.

use worker::wasm_bindgen_futures::JsFuture;

use crate::error::ApiError;

pub async fn read(req: &web_sys::Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req.headers().get("content-length").ok().flatten();
    if declared.and_then(|v| v.trim().parse::<usize>().ok()).is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let promise = req.array_buffer().map_err(|_| ApiError::bad_request("bad_body", "the body cannot be read"))?;
    let buffer =
        JsFuture::from(promise).await.map_err(|_| ApiError::bad_request("bad_body", "the body cannot be read"))?;
    let bytes = js_sys::Uint8Array::new(&buffer);
    if bytes.length() as usize > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(bytes.to_vec())
}
