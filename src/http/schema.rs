//! OpenAPI schemas for types that live in the pure `keyward-events` and
//! `keyward-projections` crates, which do not depend on utoipa. Each mirrors the serde
//! form of its original exactly; `schema_matches_serde` in the tests keeps them honest.
#![allow(dead_code)]

use serde::Serialize;
use utoipa::ToSchema;

#[derive(ToSchema)]
#[schema(as = Role)]
#[allow(non_camel_case_types)]
pub enum RoleSchema {
    admin,
    user,
    /// Reads everything an admin reads; changes nothing.
    auditor,
}

/// `read` lists models; `chat` uses the proxy; `full` adds the management API.
#[derive(ToSchema)]
#[schema(as = Scope)]
#[allow(non_camel_case_types)]
pub enum ScopeSchema {
    read,
    chat,
    full,
}

#[derive(ToSchema)]
#[schema(as = KeyStatus)]
#[allow(non_camel_case_types)]
pub enum KeyStatusSchema {
    active,
    grace,
    expired,
    deleted,
}

/// A provider's credential: a key, or (for `bedrock`, `vertex`) an object of its parts:
/// `{"access_key_id", "secret_access_key", "session_token"?}` for Bedrock, the service
/// account's JSON key for Vertex.
#[derive(Serialize, ToSchema)]
#[schema(as = ProviderCredential)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ProviderCredentialSchema {
    Key(String),
    Parts(std::collections::HashMap<String, serde_json::Value>),
}

/// The provider kinds, read from the provider layer's list of kinds
/// (`providers::KINDS`): a new kind appears here without an edit.
pub struct ProviderKindSchema;

impl utoipa::PartialSchema for ProviderKindSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(
                crate::providers::KINDS.iter().map(|k| k.kind().as_str()),
            ))
            .into()
    }
}

impl ToSchema for ProviderKindSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("ProviderKind")
    }
}

#[derive(ToSchema)]
#[schema(as = ExpireReason)]
#[allow(non_camel_case_types)]
pub enum ExpireReasonSchema {
    manual,
    scheduled,
    rotated,
    owner_disabled,
}

#[derive(ToSchema)]
#[schema(as = RateLimit)]
pub struct RateLimitSchema {
    /// Sustained requests per minute (GCRA).
    #[schema(minimum = 1, maximum = 1000000)]
    pub requests_per_minute: u32,
    /// Requests allowed at once above the sustained rate.
    #[schema(minimum = 1, maximum = 100000)]
    pub burst: u32,
}

/// Requests and/or tokens per UTC day or calendar month; a field left out is unlimited.
#[derive(ToSchema)]
#[schema(as = Quota)]
pub struct QuotaSchema {
    #[schema(minimum = 1)]
    pub requests_per_day: Option<u64>,
    #[schema(minimum = 1)]
    pub requests_per_month: Option<u64>,
    #[schema(minimum = 1)]
    pub tokens_per_day: Option<u64>,
    #[schema(minimum = 1)]
    pub tokens_per_month: Option<u64>,
}

/// Why a known key was refused.
#[derive(ToSchema)]
#[schema(as = DenyReason)]
#[allow(non_camel_case_types)]
pub enum DenyReasonSchema {
    expired,
    deleted,
    owner_disabled,
    scope,
    provider,
    model,
    ip,
    rate_limit,
    quota,
}

#[cfg(test)]
mod tests {
    use keyward_events::{DenyReason, ExpireReason, ProviderKind, Role, Scope};
    use keyward_projections::KeyStatus;
    use serde::Serialize;
    use utoipa::PartialSchema;

    use super::*;

    fn schema_names<S: PartialSchema>() -> Vec<String> {
        let v = serde_json::to_value(S::schema()).unwrap();
        v["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    fn serde_names<T: Serialize>(all: &[T]) -> Vec<String> {
        all.iter()
            .map(|v| {
                serde_json::to_value(v)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn schema_matches_serde() {
        assert_eq!(
            schema_names::<RoleSchema>(),
            serde_names(&[Role::Admin, Role::User, Role::Auditor])
        );
        assert_eq!(
            schema_names::<ScopeSchema>(),
            serde_names(&[Scope::Read, Scope::Chat, Scope::Full])
        );
        assert_eq!(
            schema_names::<KeyStatusSchema>(),
            serde_names(&[
                KeyStatus::Active,
                KeyStatus::Grace,
                KeyStatus::Expired,
                KeyStatus::Deleted
            ])
        );
        // Every kind of the vocabulary, in the console's order.
        let mut listed = schema_names::<ProviderKindSchema>();
        let mut all = serde_names(&ProviderKind::ALL);
        assert_eq!(listed.len(), all.len());
        listed.sort();
        all.sort();
        assert_eq!(listed, all);
        assert_eq!(
            schema_names::<ExpireReasonSchema>(),
            serde_names(&[
                ExpireReason::Manual,
                ExpireReason::Scheduled,
                ExpireReason::Rotated,
                ExpireReason::OwnerDisabled
            ])
        );
        assert_eq!(
            schema_names::<DenyReasonSchema>(),
            serde_names(&[
                DenyReason::Expired,
                DenyReason::Deleted,
                DenyReason::OwnerDisabled,
                DenyReason::Scope,
                DenyReason::Provider,
                DenyReason::Model,
                DenyReason::Ip,
                DenyReason::RateLimit,
                DenyReason::Quota
            ])
        );
    }
}
