//! Every `[destinations.NAME]` of the config, each with its cloud's client (src/aws/,
//! src/azure/, src/gcp/), and the journal their imports are recorded in: what the daemon and the
//! command line turn a request's destination name into (src/export/to.rs).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::aws::Kms;
use crate::azure::Vault;
use crate::config::Destination;
use crate::gcp::KeyRing;
use crate::journal::Journal;

/// One destination's client.
pub(crate) enum Dest {
    Aws(Arc<Kms>),
    Azure(Arc<Vault>),
    Gcp(Arc<KeyRing>),
}

/// Every destination of the config.
pub(crate) struct Clouds {
    destinations: BTreeMap<String, Dest>,
    pub journal: Arc<Journal>,
    /// `policy.min_wrapping_key_bits`: what the clouds' wrapping keys must reach.
    pub min_wrapping_bits: u32,
}

impl Clouds {
    /// The destinations of `destinations`; their clients are made at first use (a
    /// credential may ask the network).
    pub(crate) fn new(
        destinations: &BTreeMap<String, Destination>,
        min_wrapping_bits: u32,
        journal: Arc<Journal>,
    ) -> Clouds {
        let destinations = destinations
            .iter()
            .map(|(name, d)| {
                let dest = match d {
                    Destination::Aws(a) => Dest::Aws(Arc::new(Kms::new(name, a))),
                    Destination::Azure(a) => Dest::Azure(Arc::new(Vault::new(name, a))),
                    Destination::Gcp(g) => Dest::Gcp(Arc::new(KeyRing::new(name, g))),
                };
                (name.clone(), dest)
            })
            .collect();
        Clouds {
            destinations,
            journal,
            min_wrapping_bits,
        }
    }

    /// The destination `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Dest> {
        self.destinations.get(name)
    }
}
