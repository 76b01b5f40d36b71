//! Building responses with as few JS↔Wasm crossings as possible.
//!
//! A `Response` is made by one call, `new Response(body, init)`, where `init` is a
//! plain JS object holding the status and headers. The init of the hot path (200 JSON)
//! is built once per isolate and reused: the constructor copies what it reads, so one
//! object serves every request. The body is the pre-serialised string from core, never
//! a `serde_json` → `JsValue` conversion.

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

/// `200 application/json` with `body`: the hot path, one crossing.
pub fn ok_json(body: &str) -> worker::Result<web_sys::Response> {
    OK_JSON.with(|cell| {
        let init = match cell.get() {
            Some(init) => init,
            None => {
                let made = init(200, Some(JSON), None)?;
                cell.get_or_init(|| made)
            }
        };
        Ok(web_sys::Response::new_with_opt_str_and_init(Some(body), init)?)
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
