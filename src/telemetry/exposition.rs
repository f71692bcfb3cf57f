//! The one Prometheus exposition every ferry role serves on its metrics port: the Prometheus
//! text format 0.0.4 by default, OpenMetrics 1.0 when the scraper prefers it (Prometheus does
//! by default), gzip when accepted, with the `process_*` and `tokio_*` families appended at
//! scrape time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;

pub(crate) const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition formats a scraper can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    OpenMetrics,
}

/// Renders the process-wide registry, with `runtime`'s families, in the format and encoding
/// the request's headers ask for.
pub(crate) fn response(handle: &PrometheusHandle, runtime: &tokio::runtime::Handle, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let format = negotiate(header_str(headers, header::ACCEPT));
    let mut text = handle.render();
    text.push_str(&super::process::render());
    text.push_str(&super::runtime::render(runtime));
    let (body, ctype) = match format {
        Format::Text => (text, TEXT),
        Format::OpenMetrics => (to_openmetrics(&text), OPENMETRICS),
    };
    let gzipped = accepts_gzip(header_str(headers, header::ACCEPT_ENCODING)).then(|| gzip_bytes(body.as_bytes())).flatten();
    let compressed = gzipped.is_some();
    let mut r = Response::new(Full::new(gzipped.map(Bytes::from).unwrap_or_else(|| Bytes::from(body))));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    if compressed {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// One media range or coding of an `Accept`/`Accept-Encoding` header with its weight.
fn weighted(value: &str) -> impl Iterator<Item = (String, f32)> + '_ {
    value.split(',').filter_map(|item| {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().filter(|n| !n.is_empty())?.to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map(|(_, v)| v.trim().parse::<f32>().unwrap_or(0.0))
            .unwrap_or(1.0);
        Some((name, q))
    })
}

/// OpenMetrics only when the client names it with a weight at least that of anything that
/// would get the text format; no header, or an unweighted `*/*`, gets the text format.
pub(crate) fn negotiate(accept: &str) -> Format {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for (range, q) in weighted(accept) {
        match range.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

pub(crate) fn accepts_gzip(accept_encoding: &str) -> bool {
    weighted(accept_encoding).any(|(coding, q)| (coding == "gzip" || coding == "x-gzip") && q > 0.0)
}

/// `None` when compression fails (never for an in-memory buffer), so the caller sends plain.
fn gzip_bytes(body: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

/// Rewrites a text-format exposition as OpenMetrics 1.0: no blank lines or free comments, a
/// counter family is named without `_total` in `# TYPE`/`# HELP` while its samples keep it,
/// `untyped` becomes `unknown`, `"` in help text is escaped, and `# EOF` ends the body.
pub(crate) fn to_openmetrics(text: &str) -> String {
    let types: HashMap<&str, &str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|r| r.split_once(' ')).collect();
    let family = |name: &str| -> String {
        match types.get(name) {
            Some(&"counter") => name.strip_suffix("_total").unwrap_or(name).to_string(),
            _ => name.to_string(),
        }
    };
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {}", family(name), escape_help(help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = if kind == "untyped" { "unknown" } else { kind };
            let _ = writeln!(out, "# TYPE {} {kind}", family(name));
        } else if line.starts_with('#') {
            continue;
        } else {
            out.push_str(&sample(line, &types));
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A counter sample named without `_total` (legal in the text format) gets it: in
/// OpenMetrics a counter's value sample is always `<family>_total`.
fn sample(line: &str, types: &HashMap<&str, &str>) -> String {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..end];
    if types.get(name) == Some(&"counter") && !name.ends_with("_total") {
        format!("{name}_total{}", &line[end..])
    } else {
        line.to_string()
    }
}

/// Text-format help escapes only `\\` and `\n`; OpenMetrics also requires `\"`.
fn escape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push('\\');
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_2_42: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation_follows_the_weights() {
        assert_eq!(negotiate(PROMETHEUS_2_42), Format::OpenMetrics);
        assert_eq!(negotiate(""), Format::Text);
        assert_eq!(negotiate("*/*"), Format::Text);
        assert_eq!(negotiate("text/plain;version=0.0.4"), Format::Text);
        assert_eq!(negotiate("application/openmetrics-text"), Format::OpenMetrics);
        assert_eq!(negotiate("text/plain;q=1, application/openmetrics-text;q=0.5"), Format::Text);
        assert_eq!(negotiate("application/openmetrics-text;q=0"), Format::Text);
        assert_eq!(negotiate("Application/OpenMetrics-Text; q=0.9, text/plain; q=0.8"), Format::OpenMetrics);
    }

    #[test]
    fn gzip_only_when_accepted() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, gzip;q=0.5"));
        assert!(!accepts_gzip(""));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
    }

    const TEXT_BODY: &str = "# HELP istio_tcp_connections_opened_total The number of \"opened\" connections\n\
# TYPE istio_tcp_connections_opened_total counter\n\
istio_tcp_connections_opened_total{reporter=\"source\",x=\"a\\\"b\"} 3\n\
\n\
# TYPE odd counter\n\
odd 2\n\
\n\
# TYPE istio_build gauge\n\
istio_build{component=\"ztunnel\",tag=\"0.1.0\"} 1\n\
\n\
# TYPE lat summary\n\
lat{quantile=\"0.5\"} 0.1\n\
lat_sum 1.5\n\
lat_count 4\n\
\n";

    #[test]
    fn openmetrics_names_families_without_total_and_ends_with_eof() {
        let om = to_openmetrics(TEXT_BODY);
        let want = "# HELP istio_tcp_connections_opened The number of \\\"opened\\\" connections\n\
# TYPE istio_tcp_connections_opened counter\n\
istio_tcp_connections_opened_total{reporter=\"source\",x=\"a\\\"b\"} 3\n\
# TYPE odd counter\n\
odd_total 2\n\
# TYPE istio_build gauge\n\
istio_build{component=\"ztunnel\",tag=\"0.1.0\"} 1\n\
# TYPE lat summary\n\
lat{quantile=\"0.5\"} 0.1\n\
lat_sum 1.5\n\
lat_count 4\n\
# EOF\n";
        assert_eq!(om, want);
    }

    #[test]
    fn the_response_is_gzip_when_accepted_and_labelled_by_format() {
        let handle = super::super::metrics::install(super::super::metrics::Role::Proxy);
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(PROMETHEUS_2_42));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = response(&handle, rt.handle(), &h);
        assert_eq!(r.headers()[header::CONTENT_TYPE], OPENMETRICS);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let body = futures_body(r);
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain).unwrap();
        assert!(plain.ends_with("# EOF\n"), "{plain}");
        assert!(plain.contains("# TYPE process_cpu_seconds counter\n"), "{plain}");
        // A counter family without `_total` in OpenMetrics, as ztunnel's collector names it.
        assert!(plain.contains("# TYPE tokio_worker_park_count counter\ntokio_worker_park_count_total{worker=\"0\"}"), "{plain}");
        let r = response(&handle, rt.handle(), &HeaderMap::new());
        assert_eq!(r.headers()[header::CONTENT_TYPE], TEXT);
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        let plain = String::from_utf8(futures_body(r).to_vec()).unwrap();
        assert!(plain.contains("istio_build{component=\"ztunnel\""), "{plain}");
        assert!(!plain.contains("# EOF"), "{plain}");
    }

    fn futures_body(r: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(r.into_body().collect()).unwrap().to_bytes()
    }
}
