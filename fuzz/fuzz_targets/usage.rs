//! Usage extraction for every wire format, streamed or whole, with and without content: never
//! panics, and reads the same facts however the body is split. The first byte picks the format
//! and mode, the second the split point.
#![no_main]

use kurral_proxy::usage::{Caps, ResponseInspector, Shape};
use libfuzzer_sys::fuzz_target;

const SHAPES: [Shape; 4] = [Shape::Chat, Shape::Responses, Shape::Messages, Shape::Gemini];

fuzz_target!(|data: &[u8]| {
    let [mode, split, body @ ..] = data else { return };
    let shape = SHAPES[(mode & 3) as usize];
    let event_stream = mode & 4 != 0;
    let caps = if mode & 8 != 0 { Caps { content: true, text: 32, arguments: 16, scan: false } } else { Caps::USAGE_ONLY };
    let split = (*split as usize).min(body.len());

    let read = |pieces: &[&[u8]]| {
        let mut ins = ResponseInspector::new(shape, event_stream, caps);
        for p in pieces {
            ins.feed(p);
        }
        ins.finish()
    };
    let whole = read(&[body]);
    let (a, b) = body.split_at(split);
    assert_eq!(whole, read(&[a, b]));
    assert!(whole.text.len() <= caps.text);
    assert!(whole.tool_calls.iter().all(|t| t.arguments.len() <= caps.arguments));
    if let Some(raw) = &whole.usage_raw {
        if let Some(u) = shape.normalize(raw) {
            if let (Some(i), Some(o), Some(t)) = (u.input_tokens, u.output_tokens, u.total_tokens) {
                assert_eq!(i + o, t);
            }
        }
    }
});
