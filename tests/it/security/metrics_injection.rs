//! `/metrics` from the attacker's side: a model name is the client's to choose, so it must
//! neither write lines into the exposition nor grow it without bound.

use axum::body::Body;
use axum::http::Request;
use keyward::metrics::KeyLabels;
use keyward_events::{Event, ProviderKind, ProviderUpdated};
use serde_json::json;

use crate::proxy::{Gw, KeySpec, OPENAI_CREDENTIAL, Reply, chat};

async fn scrape(gw: &Gw) -> String {
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let r = Reply::read(gw.call(req).await).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// One label value from `rest` (just after its opening quote), unescaped, and what follows
/// its closing quote; `None` for an escape the text format does not have or no closing quote.
fn label_value(rest: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &rest[i + 1..])),
            '\\' => match chars.next()?.1 {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                _ => return None,
            },
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    None
}

/// A sample: its metric name, its labels (unescaped) and its value.
type Sample = (String, Vec<(String, String)>, f64);

/// A sample line of the OpenMetrics text format, parsed strictly: its name, its labels,
/// unescaped, and its value. `None` if the line is not one.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"")?;
            let key = &rest[..eq];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let (value, after) = label_value(&rest[eq + 2..])?;
            labels.push((key.to_owned(), value));
            rest = after.strip_prefix(',').unwrap_or(after);
        }
    }
    let value = rest.strip_prefix(' ')?.parse().ok()?;
    Some((name.to_owned(), labels, value))
}

/// Every line parses; comments are the three kinds the format has; `# EOF` ends it.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    let mut samples = Vec::new();
    for l in &lines[..lines.len() - 1] {
        if l.starts_with("# HELP ") || l.starts_with("# TYPE ") || l.starts_with("# UNIT ") {
            continue;
        }
        match parse_sample(l) {
            Some(s) => samples.push(s),
            None => panic!("not a sample line: {l:?}\nin\n{text}"),
        }
    }
    samples
}

const INJECTION: &str = "x\"} 1\nkeyward_ready 0\n# EOF\nkeyward_forged_total{a=\"b\"} 7\r\n";

#[tokio::test]
async fn a_model_name_cannot_inject_lines_into_the_exposition() {
    let gw = Gw::start_with(|c| c.metrics_key_labels = KeyLabels::KeyId).await;
    // The provider names the hostile model, so it is counted under its own (escaped) name.
    let p = gw.openai(&[INJECTION]).await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat(INJECTION))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let text = scrape(&gw).await;
    let samples = parse_exposition(&text);
    let ready: Vec<_> = samples.iter().filter(|s| s.0 == "keyward_ready").collect();
    assert_eq!(ready.len(), 1, "{text}");
    assert_eq!(ready[0].2, 1.0);
    assert!(!samples.iter().any(|s| s.0.contains("forged")), "{text}");
    // The model is there, whole, once unescaped: the carriage return is replaced.
    let requests = samples
        .iter()
        .find(|s| s.0 == "keyward_proxy_requests_total")
        .unwrap();
    let label = |k: &str| {
        requests
            .1
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(label("model"), Some(INJECTION.replace('\r', "_").as_str()));
    assert_eq!(label("key_id"), Some(key_id.as_str()));
    assert_eq!(requests.2, 1.0);
}

#[tokio::test]
async fn made_up_models_share_one_series_and_a_listed_model_keeps_its_own() {
    let gw = Gw::start().await;
    // The provider serves every model; the key too.
    let open = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&open)).await;
    let before = scrape(&gw).await.len();
    for i in 0..500 {
        let r = gw
            .post(
                "/v1/chat/completions",
                &secret,
                chat(&format!("made-up-{i}")),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let text = scrape(&gw).await;
    let samples = parse_exposition(&text);
    let models: std::collections::HashSet<&str> = samples
        .iter()
        .filter(|s| s.0 == "keyward_proxy_requests_total")
        .flat_map(|s| {
            s.1.iter()
                .filter(|(k, _)| k == "model")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    assert_eq!(models, ["other"].into_iter().collect());
    let other = samples
        .iter()
        .find(|s| {
            s.0 == "keyward_proxy_requests_total"
                && s.1.contains(&("model".to_owned(), "other".to_owned()))
        })
        .unwrap();
    assert_eq!(other.2, 500.0);
    // One label set's few series, not 500 of them.
    assert!(
        text.len() < before + 16 * 1024,
        "{} → {}",
        before,
        text.len()
    );

    // A provider that lists its models, or a key that does, keeps their names.
    let listed = gw.openai(&["gpt-4o-mini"]).await;
    let (_, listed_secret) = gw.key(KeySpec::on(&listed)).await;
    let mut by_key = KeySpec::on(&open);
    by_key.models = vec!["o3-mini".into()];
    let (_, key_listed) = gw.key(by_key).await;
    for (secret, model) in [(&listed_secret, "gpt-4o-mini"), (&key_listed, "o3-mini")] {
        let r = gw.post("/v1/chat/completions", secret, chat(model)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let samples = parse_exposition(&scrape(&gw).await);
    for (provider, model) in [(&listed, "gpt-4o-mini"), (&open, "o3-mini")] {
        assert!(
            samples.iter().any(|s| s.0 == "keyward_proxy_requests_total"
                && s.1.contains(&("provider".to_owned(), provider.clone()))
                && s.1.contains(&("model".to_owned(), model.to_owned()))
                && s.2 == 1.0),
            "{provider} {model}"
        );
    }
}

#[tokio::test]
async fn an_admin_set_provider_name_or_model_list_cannot_inject_either() {
    let gw = Gw::start().await;
    let p = gw
        .provider(
            ProviderKind::Openai,
            &gw.mock.openai_base(),
            json!({}),
            &[],
            Some(OPENAI_CREDENTIAL),
        )
        .await;
    gw.append(Event::ProviderUpdated(ProviderUpdated {
        provider_id: p.clone(),
        name: Some(INJECTION.into()),
        base_url: None,
        config: None,
        models: Some(vec![INJECTION.into()]),
    }))
    .await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat(INJECTION))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = scrape(&gw).await;
    let samples = parse_exposition(&text);
    assert_eq!(
        samples.iter().filter(|s| s.0 == "keyward_ready").count(),
        1,
        "{text}"
    );
}
