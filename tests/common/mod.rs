// Each integration test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

pub mod client;
pub mod harness;
pub mod mock_upstream;
pub mod raw_upstream;
pub mod usage_fixtures;

/// Every file under `dir` (recursively) with its bytes: for searching a data dir for what must
/// not be in it.
pub fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    collect_files(dir, &mut out);
    out
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}
