//! Building responses with as few JS↔Wasm crossings as possible.
//!
//! A `Response` is made by one call, `new Response(body, init)`, where `init` is a
//! plain JS object holding the status and headers. The init of the hot path (200 JSON)
//! is built once per isolate and reused: the constructor copies what it reads, so one
//! object serves every request. The body is the pre-serialised JSON from core, never
//! a `serde_json` → `JsValue` conversion.
//!
//! The hot path hands workerd what it copies fastest: the body as bytes (a view of the
//! Wasm memory, which the constructor copies before returning) rather than a string
//! decoded by `TextDecoder` first, and its headers as a `Headers` object, which the
//! constructor clones, rather than a plain object whose keys it enumerates.

use std::cell::OnceCell;

use wasm_bindgen::JsValue;

const JSON: &str = "application/json";

thread_local! {
    static OK_JSON: OnceCell<web_sys::ResponseInit> = const { OnceCell::new() };
}

fn init(status: u16, content_type: Option<&str>, allow: Option<&str>) -> worker::Result<web_sys::ResponseInit> {
    let headers = js_sys::Object::new();
    if let Some(ct) = content_type {
        js_sys::Reflect::set(&headers, &JsValue::from_str("content-type"), &JsValue::from_str(ct))?;
    }
    // Every answer is per request: no cache may keep it.
    js_sys::Reflect::set(&headers, &JsValue::from_str("cache-control"), &JsValue::from_str("no-store"))?;
    if let Some(allow) = allow {
        js_sys::Reflect::set(&headers, &JsValue::from_str("allow"), &JsValue::from_str(allow))?;
    }
    let init = web_sys::ResponseInit::new();
    init.set_status(status);
    init.set_headers(&headers);
    Ok(init)
}

/// The hot path's init: status 200 and its headers in a `Headers` object.
fn ok_json_init() -> worker::Result<web_sys::ResponseInit> {
    let headers = web_sys::Headers::new()?;
    headers.set("content-type", JSON)?;
    // Every answer is per request: no cache may keep it.
    headers.set("cache-control", "no-store")?;
    let init = web_sys::ResponseInit::new();
    init.set_status(200);
    init.set_headers(&headers);
    Ok(init)
}

/// `200 application/json` with `body`: the hot path, one crossing.
pub fn ok_json(body: String) -> worker::Result<web_sys::Response> {
    OK_JSON.with(|cell| {
        let init = match cell.get() {
            Some(init) => init,
            None => {
                let made = ok_json_init()?;
                cell.get_or_init(|| made)
            }
        };
        let mut body = body.into_bytes();
        Ok(web_sys::Response::new_with_opt_u8_array_and_init(Some(&mut body), init)?)
    })
}

/// A JSON response with any status (and an `Allow` header for 405s).
pub fn json_with(status: u16, body: &str, allow: Option<&str>) -> worker::Result<web_sys::Response> {
    let init = init(status, Some(JSON), allow)?;
    Ok(web_sys::Response::new_with_opt_str_and_init(Some(body), &init)?)
}

/// `204 No Content`.
pub fn no_content() -> worker::Result<web_sys::Response> {
    let init = init(204, None, None)?;
    Ok(web_sys::Response::new_with_opt_str_and_init(None, &init)?)
}

/// `204` answering a granted CORS preflight.
pub fn preflight(granted: &crate::cors::Preflight) -> worker::Result<web_sys::Response> {
    let init = init(204, None, None)?;
    let response = web_sys::Response::new_with_opt_str_and_init(None, &init)?;
    let headers = response.headers();
    for (name, value) in granted.headers() {
        headers.set(name, value)?;
    }
    if granted.allow_origin != "*" {
        headers.set("vary", "Origin")?;
    }
    Ok(response)
}

/// Lets the browser show `response` to a page from `allow_origin` (an answer of the
/// handler or an error alike). Only browser requests from allowed origins pay these
/// two crossings.
pub fn allow_cross_origin(response: &web_sys::Response, allow_origin: &str) -> worker::Result<()> {
    let headers = response.headers();
    headers.set("access-control-allow-origin", allow_origin)?;
    if allow_origin != "*" {
        headers.set("vary", "Origin")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test as test;
    use worker::wasm_bindgen_futures::JsFuture;

    use super::*;

    async fn text(response: &web_sys::Response) -> Option<String> {
        JsFuture::from(response.text().expect("text")).await.expect("body").as_string()
    }

    /// Hot-path responses come from one init and from views of the same Wasm memory, yet
    /// each owns its body and headers: a later body does not overwrite an earlier one,
    /// and the CORS headers added to one response do not reach the next.
    #[test]
    async fn hot_path_responses_share_nothing() {
        let first = ok_json(r#"{"n":1}"#.to_owned()).expect("first");
        allow_cross_origin(&first, "https://app.example").expect("cors");
        let second = ok_json(r#"{"n":2}"#.to_owned()).expect("second");
        let header = |r: &web_sys::Response, name: &str| r.headers().get(name).expect("header");
        assert_eq!(header(&first, "access-control-allow-origin").as_deref(), Some("https://app.example"));
        assert_eq!(header(&second, "access-control-allow-origin"), None);
        for r in [&first, &second] {
            assert_eq!(r.status(), 200);
            assert_eq!(header(r, "content-type").as_deref(), Some(JSON));
            assert_eq!(header(r, "cache-control").as_deref(), Some("no-store"));
        }
        assert_eq!(text(&first).await.as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(text(&second).await.as_deref(), Some(r#"{"n":2}"#));
    }
}
