//! # nacelle-console
//!
//! Nacelle's web console: a single-page app of plain ES modules, HTML and CSS (no build step,
//! no Node.js to build the server), embedded in the binary with `rust-embed`. This crate only
//! holds the assets and says how to serve them; the server's HTTP layer answers `/nacos/` with
//! [`lookup`], and the console talks to the server through Nacos's own console APIs.
//!
//! # Caching
//! Every asset but `index.html` is served under `/nacos/assets/<tag>/`, where `<tag>` is a
//! hash of all the assets together ([`asset_tag`]): a new build changes the address of every
//! asset, so they are `immutable` for a year, while `index.html` (which names the tag) is
//! `no-cache`. One tag for all keeps relative `import`s between modules working unchanged.
//!
//! # Compression
//! Each compressible asset is gzipped once, on first use, and the gzipped bytes are kept for
//! the process's life (the console is ~50 KB: the cache is bounded by the embedded set).
//!
//! # Layout
//! - this file: the embedded set, [`lookup`], [`Asset`];
//! - `web/`: the app — `index.html`, `app.js` (router, shell), `api.js` (calls, token),
//!   `pages/*.js` (one page each), `chart.js` (canvas line charts), `style.css`.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::OnceLock;

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
struct Web;

/// One asset, ready to send.
pub struct Asset {
    /// The bytes as stored.
    pub body: Vec<u8>,
    /// The same, gzipped, when compression pays (text types).
    pub gzip: Option<Vec<u8>>,
    /// `Content-Type`.
    pub content_type: String,
    /// `Cache-Control`.
    pub cache_control: &'static str,
}

struct Set {
    tag: String,
    assets: HashMap<String, Asset>,
}

/// The URL prefix of the hashed assets, also written into `index.html`.
const TAG_MARK: &str = "__ASSET_TAG__";

fn set() -> &'static Set {
    static SET: OnceLock<Set> = OnceLock::new();
    SET.get_or_init(build)
}

fn build() -> Set {
    let mut names: Vec<String> = Web::iter().map(|n| n.into_owned()).collect();
    names.sort();
    let mut hasher = crc32fast::Hasher::new();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let Some(file) = Web::get(&name) else {
            continue;
        };
        hasher.update(name.as_bytes());
        hasher.update(&file.data);
        files.push((name, file.data.into_owned()));
    }
    let tag = format!("{:08x}", hasher.finalize());
    let mut assets = HashMap::with_capacity(files.len());
    for (name, mut body) in files {
        let content_type = mime_guess::from_path(&name)
            .first_raw()
            .unwrap_or("application/octet-stream");
        let content_type = if content_type.starts_with("text/")
            || content_type == "application/javascript"
            || content_type == "image/svg+xml"
        {
            format!("{content_type}; charset=utf-8")
        } else {
            content_type.to_owned()
        };
        let cache_control = if name == "index.html" {
            body = String::from_utf8_lossy(&body)
                .replace(TAG_MARK, &tag)
                .into_bytes();
            "no-cache"
        } else {
            "public, max-age=31536000, immutable"
        };
        let gzip = compressible(&content_type)
            .then(|| gzip(&body))
            .filter(|g| g.len() < body.len());
        assets.insert(
            name,
            Asset {
                body,
                gzip,
                content_type,
                cache_control,
            },
        );
    }
    Set { tag, assets }
}

fn compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.starts_with("application/javascript")
        || content_type.starts_with("application/json")
        || content_type.starts_with("image/svg")
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// The hash naming this build's assets (`/nacos/assets/<tag>/…`).
pub fn asset_tag() -> &'static str {
    &set().tag
}

/// The asset for `path`, the part of the request path after `/nacos/`: `""` and
/// `index.html` are the app's page; `assets/<tag>/<file>` the other files (a stale tag is not
/// found, so a page of an older build reloads rather than mixing versions).
pub fn lookup(path: &str) -> Option<&'static Asset> {
    let s = set();
    if path.is_empty() || path == "index.html" {
        return s.assets.get("index.html");
    }
    let rest = path.strip_prefix("assets/")?;
    let (tag, file) = rest.split_once('/')?;
    if tag != s.tag || file == "index.html" {
        return None;
    }
    s.assets.get(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn index_names_the_tag_and_is_not_cached() {
        let index = lookup("").unwrap();
        assert_eq!(index.cache_control, "no-cache");
        assert!(index.content_type.starts_with("text/html"));
        let text = String::from_utf8(index.body.clone()).unwrap();
        assert!(text.contains(&format!("assets/{}/app.js", asset_tag())));
        assert!(!text.contains(TAG_MARK));
    }

    #[test]
    fn assets_are_immutable_under_their_tag_only() {
        let js = lookup(&format!("assets/{}/app.js", asset_tag())).unwrap();
        assert!(
            js.content_type.starts_with("application/javascript")
                || js.content_type.starts_with("text/javascript")
        );
        assert!(js.cache_control.contains("immutable"));
        assert!(lookup("assets/00000000/app.js").is_none() || asset_tag() == "00000000");
        assert!(lookup("app.js").is_none());
        assert!(lookup(&format!("assets/{}/missing.js", asset_tag())).is_none());
        assert!(lookup(&format!("assets/{}/../Cargo.toml", asset_tag())).is_none());
    }

    #[test]
    fn text_assets_are_gzipped_and_decode_back() {
        use std::io::Read as _;
        let css = lookup(&format!("assets/{}/style.css", asset_tag())).unwrap();
        let gz = css.gzip.as_ref().unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, css.body);
    }
}
