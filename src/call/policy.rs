//! Recording policy decisions, pure (no IO, no clock): which `[[service]]` a call belongs to
//! (the first in file order whose numbers match the called number) and whether its service
//! records it, sampling included. Sampling is a SHA-256 of the seed and the Call-ID, so the same
//! call always gets the same decision and an auditor holding the seed can recompute it.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::call::metadata::Decision;
use crate::config::{RecordRule, ServiceConfig};

/// The configured services and the sampling seed; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ServicePolicy {
    services: Arc<[ServiceConfig]>,
    sample_seed: Arc<str>,
}

/// What policy says about one call: its service and the recording decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The service's name.
    pub name: String,
    /// The service's tenant.
    pub tenant: Option<String>,
    /// `Recorded`, `SampledOut` or `PolicyNone`.
    pub decision: Decision,
    /// Why, when the decision is not `Recorded`.
    pub reason: Option<String>,
}

impl ServicePolicy {
    /// Policy over `services` (in file order). `sample_seed` is required by the configuration
    /// once a service samples; without one, sampling hashes the Call-ID alone.
    pub fn new(services: Vec<ServiceConfig>, sample_seed: Option<String>) -> ServicePolicy {
        ServicePolicy {
            services: services.into(),
            sample_seed: sample_seed.unwrap_or_default().into(),
        }
    }

    /// The first service whose numbers match `called`, or the default service (no numbers) if
    /// none before it did; `None` when no service claims the call.
    pub fn service_for(&self, called: Option<&str>) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| {
            s.numbers.is_empty() || called.is_some_and(|c| s.numbers.iter().any(|n| n.matches(c)))
        })
    }

    /// The service of a call to `called` with SIP Call-ID `call_id`, and whether it is to be
    /// recorded; `None` when no service claims it (it is then recorded, as without services).
    pub fn assign(&self, called: Option<&str>, call_id: &str) -> Option<Assignment> {
        let service = self.service_for(called)?;
        let name = &service.name;
        let (decision, reason) = match service.record {
            RecordRule::All => (Decision::Recorded, None),
            RecordRule::None => (
                Decision::PolicyNone,
                Some(format!(
                    "service \"{name}\" records no calls (record = \"none\")"
                )),
            ),
            RecordRule::Sample(share) if sampled_in(&self.sample_seed, call_id, share) => {
                (Decision::Recorded, None)
            }
            RecordRule::Sample(share) => (
                Decision::SampledOut,
                Some(format!(
                    "sampled out: service \"{name}\" records a share of {share} of its calls, \
                     chosen by Call-ID and policy.sample_seed"
                )),
            ),
        };
        Some(Assignment {
            name: name.clone(),
            tenant: service.tenant.clone(),
            decision,
            reason,
        })
    }
}

/// The sampling draw of a call, uniform in [0, 1): the first 53 bits of
/// SHA-256(seed, a zero byte, Call-ID) as a fraction. SHA-256 and not std's hasher, whose output
/// may change between Rust versions: a decision must be recomputable years later.
pub fn sample_draw(seed: &str, call_id: &str) -> f64 {
    let digest = Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update([0u8])
        .chain_update(call_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a service recording `share` (0.0..=1.0) of its calls records the call `call_id`.
pub fn sampled_in(seed: &str, call_id: &str, share: f64) -> bool {
    sample_draw(seed, call_id) < share
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NumberPattern;

    fn service(name: &str, numbers: &[&str], record: RecordRule) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            tenant: Some("t".into()),
            numbers: numbers
                .iter()
                .map(|n| n.parse::<NumberPattern>().unwrap())
                .collect(),
            record,
        }
    }

    fn policy() -> ServicePolicy {
        ServicePolicy::new(
            vec![
                service("exception", &["0295120001"], RecordRule::None),
                service("tax", &["029512*", "0800123"], RecordRule::Sample(0.25)),
                service("rest", &[], RecordRule::All),
            ],
            Some("change-me".into()),
        )
    }

    #[test]
    fn first_matching_service_in_file_order_and_the_default_catches_the_rest() {
        let p = policy();
        let name = |called: Option<&str>| p.service_for(called).map(|s| s.name.as_str());
        assert_eq!(name(Some("0295120001")), Some("exception"));
        assert_eq!(name(Some("0295120002")), Some("tax"));
        assert_eq!(name(Some("0800123")), Some("tax"));
        assert_eq!(name(Some("08001234")), Some("rest"));
        assert_eq!(name(None), Some("rest"));
        let no_default = ServicePolicy::new(vec![service("only", &["100"], RecordRule::All)], None);
        assert_eq!(no_default.service_for(Some("101")), None);
        assert_eq!(no_default.assign(Some("101"), "c"), None);
        assert_eq!(ServicePolicy::default().assign(Some("100"), "c"), None);
    }

    #[test]
    fn assignments_carry_the_decision_and_why() {
        let p = policy();
        assert_eq!(
            p.assign(Some("0295120001"), "any"),
            Some(Assignment {
                name: "exception".into(),
                tenant: Some("t".into()),
                decision: Decision::PolicyNone,
                reason: Some("service \"exception\" records no calls (record = \"none\")".into()),
            })
        );
        assert_eq!(
            p.assign(Some("1"), "any").map(|a| (a.decision, a.reason)),
            Some((Decision::Recorded, None))
        );
        // Find one sampled-out and one sampled-in Call-ID and check what each says.
        let out = (0..)
            .map(|i| format!("call-{i}"))
            .find(|id| !sampled_in("change-me", id, 0.25))
            .unwrap_or_default();
        assert_eq!(
            p.assign(Some("0295120000"), &out)
                .map(|a| (a.decision, a.reason)),
            Some((
                Decision::SampledOut,
                Some(
                    "sampled out: service \"tax\" records a share of 0.25 of its calls, chosen \
                     by Call-ID and policy.sample_seed"
                        .into()
                )
            ))
        );
        let kept = (0..)
            .map(|i| format!("call-{i}"))
            .find(|id| sampled_in("change-me", id, 0.25))
            .unwrap_or_default();
        assert_eq!(
            p.assign(Some("0295120000"), &kept).map(|a| a.decision),
            Some(Decision::Recorded)
        );
    }

    #[test]
    fn the_draw_is_sha256_of_seed_zero_byte_and_call_id() {
        // Computed independently: printf 'change-me\0call-1@host' | sha256sum, first 8 bytes
        // 2091aa9d1c1718ca, shifted right by 11 bits, over 2^53.
        assert_eq!(
            sample_draw("change-me", "call-1@host"),
            1_145_920_152_634_083.0 / 9_007_199_254_740_992.0
        );
        assert_ne!(
            sample_draw("change-mf", "call-1@host"),
            sample_draw("change-me", "call-1@host")
        );
    }

    #[test]
    fn sampled_shares_are_within_one_point_and_decisions_repeat() {
        let ids: Vec<String> = (0..10_000)
            .map(|i| format!("{i:08x}-a84b-4c1d@192.0.2.{}", i % 250))
            .collect();
        for share in [0.25, 0.5] {
            let first: Vec<bool> = ids
                .iter()
                .map(|id| sampled_in("change-me", id, share))
                .collect();
            let recorded = first.iter().filter(|&&r| r).count() as f64 / ids.len() as f64;
            assert!(
                (recorded - share).abs() <= 0.01,
                "share {share}: recorded {recorded}"
            );
            let again: Vec<bool> = ids
                .iter()
                .map(|id| sampled_in("change-me", id, share))
                .collect();
            assert_eq!(first, again, "the same Call-ID gets the same decision");
        }
        // The edges are exact: nothing below 0, everything below 1.
        assert!(ids.iter().all(|id| !sampled_in("s", id, 0.0)));
        assert!(ids.iter().all(|id| sampled_in("s", id, 1.0)));
    }
}
