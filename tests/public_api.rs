//! The public surface is a reviewed list: this test documents the crate with
//! rustdoc (default features), reads the item listing (`all.html`: every public
//! struct, enum, trait, function, macro, constant and type alias, by path;
//! `#[doc(hidden)]` items are not in it) and compares it with
//! `tests/public_api.txt`. Adding or removing a public item fails here until the
//! list is updated in the same change:
//! `PUBLIC_API=overwrite cargo test --test public_api`.

use std::path::Path;
use std::process::Command;

/// The item paths listed in rustdoc's `all.html`, sorted.
fn listed_items(all_html: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut rest = all_html;
    while let Some(i) = rest.find("<a href=\"") {
        rest = &rest[i + 9..];
        let Some(end) = rest.find('"') else { break };
        let href = &rest[..end];
        rest = &rest[end..];
        // `module/kind.Name.html`: item pages only (not `index.html`, not anchors).
        let Some(page) = href.strip_suffix(".html") else {
            continue;
        };
        if href.contains('#') || href.contains("://") || href.starts_with("..") {
            continue;
        }
        let (module, file) = match page.rsplit_once('/') {
            Some((m, f)) => (m.replace('/', "::"), f),
            None => (String::new(), page),
        };
        let Some((kind, name)) = file.split_once('.') else {
            continue;
        };
        if matches!(kind, "index" | "all") {
            continue;
        }
        let path = if module.is_empty() {
            name.to_owned()
        } else {
            format!("{module}::{name}")
        };
        items.push(format!("{kind} {path}"));
    }
    items.sort();
    items.dedup();
    items
}

#[test]
fn public_items_match_the_reviewed_list() {
    // The tests crate lives in tests/; the library is its parent directory.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    let target = root.join("target").join("public-api");
    let status = Command::new(env!("CARGO"))
        .args(["doc", "--no-deps", "--lib", "-p", "shared_allocator"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTDOCFLAGS")
        .current_dir(root)
        .status()
        .expect("run cargo doc");
    assert!(status.success(), "cargo doc failed");
    let html = std::fs::read_to_string(target.join("doc/shared_allocator/all.html"))
        .expect("rustdoc's all.html");
    let got = listed_items(&html);
    assert!(got.len() > 20, "parsed too few items: {got:?}");
    let list = root.join("tests/public_api.txt");
    let text = got.join("\n") + "\n";
    if std::env::var_os("PUBLIC_API").is_some_and(|v| v == "overwrite") {
        std::fs::write(&list, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&list).unwrap_or_default();
    let want: Vec<&str> = want.lines().filter(|l| !l.is_empty()).collect();
    let added: Vec<&String> = got.iter().filter(|g| !want.contains(&g.as_str())).collect();
    let removed: Vec<&&str> = want
        .iter()
        .filter(|w| !got.iter().any(|g| g == **w))
        .collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the public surface changed: review it, then update tests/public_api.txt \
         (PUBLIC_API=overwrite cargo test --test public_api)\nadded: {added:#?}\nremoved: {removed:#?}"
    );
}
