//! Routing: never panics, and a proxied call goes to a path that is the tail of the one the
//! client sent, under the provider prefix, starting with `/` and without dot segments. The first
//! byte is the length of the method; the method and target follow.
#![no_main]

use kurral_proxy::provider::{route, Endpoint, Provider, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let (method, target) = rest.split_at(usize::from(m).min(rest.len()));
    match route(method, target) {
        Route::Health => {
            assert!(method == b"GET" || method == b"HEAD");
            assert!(target.starts_with(b"/api/proxy/health"));
        }
        Route::NotFound => {}
        Route::Proxy { provider, endpoint, upstream_target, path_model } => {
            // A suffix of the input: the same bytes, ending where the target ends.
            let start = upstream_target.as_ptr() as usize - target.as_ptr() as usize;
            assert!(start <= target.len() && start + upstream_target.len() == target.len());
            assert_eq!(&target[start..], upstream_target);
            assert!(upstream_target.starts_with(b"/"));
            let prefix = format!("/api/proxy/{}", provider.name());
            assert_eq!(&target[..start], prefix.as_bytes());
            let path = upstream_target.split(|&b| b == b'?').next().unwrap();
            assert!(path.len() > 1);
            assert!(!path.split(|&b| b == b'/').any(|s| s == b".." || s == b"."));
            if endpoint != Endpoint::Other {
                assert_eq!(method, b"POST");
            }
            if let Some(model) = path_model {
                assert_eq!(provider, Provider::Google);
                assert!(!model.is_empty() && !model.contains(&b'/'));
                let at = model.as_ptr() as usize - upstream_target.as_ptr() as usize;
                assert!(at + model.len() <= path.len());
            }
            if endpoint.streams_by_path() {
                assert!(path_model.is_some());
            }
        }
    }
});
