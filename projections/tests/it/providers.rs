use keyward_events::*;
use serde_json::json;

use crate::support::*;

fn key_updated(provider_id: &str, fingerprint: &str, last4: &str) -> Event {
    Event::ProviderKeyUpdated(ProviderKeyUpdated {
        provider_id: provider_id.into(),
        ciphertext: "c0ffee".repeat(20),
        nonce: "00112233445566778899aabb".into(),
        keyring_version: 2,
        fingerprint: fingerprint.into(),
        last4: last4.into(),
    })
}

#[test]
fn a_created_provider_is_found_by_id_and_name() {
    let s = given([(at(1, 0), provider_created(OPENAI, "OpenAI"))]);
    let p = s.providers.get(OPENAI).unwrap();
    assert_eq!(p.provider_id, OPENAI);
    assert_eq!(p.name, "OpenAI");
    assert_eq!(p.kind, ProviderKind::Openai);
    assert_eq!(p.base_url, "https://api.openai.com/v1");
    assert_eq!(p.models, vec!["gpt-4o".to_owned()]);
    assert!(p.config.is_empty());
    assert_eq!(p.credential, None);
    assert_eq!(p.verification, None);
    assert_eq!((p.created_at, p.updated_at), (at(1, 0), at(1, 0)));
    assert_eq!(p.deleted_at, None);
    assert_eq!(p.version, 1);
    assert_eq!(s.providers.by_name("OpenAI").unwrap().provider_id, OPENAI);
    assert!(s.providers.by_name("openai").is_none());
    assert_eq!(s.providers.len(), 1);
    assert_eq!(s.providers.iter().count(), 1);
}

#[test]
fn an_update_changes_only_the_fields_it_carries() {
    let s = given([
        (at(1, 0), provider_created(OPENAI, "OpenAI")),
        (
            at(2, 0),
            Event::ProviderUpdated(ProviderUpdated {
                provider_id: OPENAI.into(),
                name: Some("OpenAI prod".into()),
                config: Some(
                    json!({"organization": "org_1"})
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
                ..ProviderUpdated::default()
            }),
        ),
        (
            at(3, 0),
            Event::ProviderUpdated(ProviderUpdated {
                provider_id: OPENAI.into(),
                base_url: Some("https://eu.api.openai.com/v1".into()),
                models: Some(vec!["gpt-4o".into(), "gpt-4o-mini".into()]),
                ..ProviderUpdated::default()
            }),
        ),
    ]);
    let p = s.providers.get(OPENAI).unwrap();
    assert_eq!(p.name, "OpenAI prod");
    assert_eq!(p.config.get("organization"), Some(&json!("org_1")));
    assert_eq!(p.base_url, "https://eu.api.openai.com/v1");
    assert_eq!(
        p.models,
        vec!["gpt-4o".to_owned(), "gpt-4o-mini".to_owned()]
    );
    assert_eq!(p.kind, ProviderKind::Openai);
    assert_eq!(
        (p.version, p.updated_at, p.created_at),
        (3, at(3, 0), at(1, 0))
    );
    assert!(s.providers.by_name("OpenAI").is_none());
    assert_eq!(
        s.providers.by_name("OpenAI prod").unwrap().provider_id,
        OPENAI
    );
}

#[test]
fn a_new_credential_replaces_the_sealed_one() {
    let s = given([
        (at(1, 0), provider_created(OPENAI, "OpenAI")),
        (at(2, 0), key_updated(OPENAI, "fp_one", "AAAA")),
        (at(3, 0), key_updated(OPENAI, "fp_two", "BBBB")),
    ]);
    let p = s.providers.get(OPENAI).unwrap();
    let c = p.credential.as_ref().unwrap();
    assert_eq!(c.fingerprint, "fp_two");
    assert_eq!(c.last4, "BBBB");
    assert_eq!(c.keyring_version, 2);
    assert_eq!(c.ciphertext, "c0ffee".repeat(20));
    assert_eq!(c.nonce, "00112233445566778899aabb");
    assert_eq!(c.updated_at, at(3, 0));
    assert_eq!(p.version, 3);

    let debug = format!("{c:?}");
    assert!(
        debug.contains("fp_two") && debug.contains("BBBB"),
        "{debug}"
    );
    assert!(!debug.contains("c0ffee"), "{debug}");
    assert!(!format!("{s:?}").contains("c0ffee"));
}

#[test]
fn the_last_verification_is_kept() {
    let s = given([
        (at(1, 0), provider_created(OPENAI, "OpenAI")),
        (
            at(2, 0),
            Event::ProviderVerified(ProviderVerified {
                provider_id: OPENAI.into(),
                ok: true,
                status: Some(200),
                detail: None,
            }),
        ),
        (
            at(3, 0),
            Event::ProviderVerified(ProviderVerified {
                provider_id: OPENAI.into(),
                ok: false,
                status: Some(401),
                detail: Some("invalid api key".into()),
            }),
        ),
    ]);
    let v = s
        .providers
        .get(OPENAI)
        .unwrap()
        .verification
        .clone()
        .unwrap();
    assert!(!v.ok);
    assert_eq!(v.status, Some(401));
    assert_eq!(v.detail.as_deref(), Some("invalid api key"));
    assert_eq!(v.at, at(3, 0));
    assert_eq!(s.providers.get(OPENAI).unwrap().version, 3);
}

#[test]
fn a_deleted_provider_stays_but_loses_its_name() {
    let s = given([
        (at(1, 0), provider_created(OPENAI, "OpenAI")),
        (at(1, 1), provider_created("prv_groq", "Groq")),
        (
            at(2, 0),
            Event::ProviderDeleted(ProviderDeleted {
                provider_id: OPENAI.into(),
                forced: true,
            }),
        ),
        (at(3, 0), provider_created("prv_openai2", "OpenAI")),
        (at(3, 1), key_updated("prv_nope", "fp", "ZZZZ")),
    ]);
    let p = s.providers.get(OPENAI).unwrap();
    assert!(p.is_deleted());
    assert_eq!(p.deleted_at, Some(at(2, 0)));
    assert_eq!(p.version, 2);
    assert_eq!(
        s.providers.by_name("OpenAI").unwrap().provider_id,
        "prv_openai2"
    );
    assert_eq!(s.providers.by_name("Groq").unwrap().provider_id, "prv_groq");
    assert_eq!(s.providers.len(), 3);
    assert!(s.providers.get("prv_nope").is_none());
}
