//! Request bodies: inspection never panics, and the include_usage rewrite changes only what it
//! must: its output is JSON wherever its input was, with `stream_options.include_usage` true and
//! every other member unchanged.
#![no_main]

use kurral_proxy::inspect::inspect_request;
use kurral_proxy::usage::include_usage::add_include_usage;
use kurral_proxy::usage::{Caps, Shape};
use libfuzzer_sys::fuzz_target;

const SHAPES: [Shape; 4] = [Shape::Chat, Shape::Responses, Shape::Messages, Shape::Gemini];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let caps = Caps { content: true, text: 40, arguments: 20, scan: mode & 4 != 0 };
    let info = inspect_request(&mut body.to_vec(), SHAPES[(mode & 3) as usize], caps);
    assert!(info.last_user_text.as_ref().is_none_or(|t| t.len() <= 40));

    let rewritten = add_include_usage(body);
    if let (Some(out), Ok(before)) = (rewritten, serde_json::from_slice::<serde_json::Value>(body)) {
        let after: serde_json::Value = serde_json::from_slice(&out).expect("the rewrite keeps JSON valid");
        assert_eq!(after["stream_options"]["include_usage"], true);
        let (mut b, mut a) = (before.as_object().unwrap().clone(), after.as_object().unwrap().clone());
        b.remove("stream_options");
        a.remove("stream_options");
        assert_eq!(a, b);
    }
});
