//! A deterministic chat workload: conversations of mixed sizes, Zipf
//! activity, messages arriving over time, members opening a conversation and
//! scrolling through what is new (one mark update per message scrolled past).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};

/// Kind of conversation, by size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dm,
    Group,
    Channel,
}

/// A conversation of the generated world.
#[derive(Clone, Debug)]
pub(crate) struct ConvSpec {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) members: Vec<u64>,
}

/// Parameters of the world; every default is documented in `docs/`.
#[derive(Clone, Debug)]
pub(crate) struct WorldParams {
    pub(crate) users: u64,
    pub(crate) dms: u64,
    pub(crate) groups: u64,
    pub(crate) group_size: (u64, u64),
    pub(crate) channels: u64,
    pub(crate) channel_size: (u64, u64),
    /// Zipf exponent of conversation activity.
    pub(crate) zipf_s: f64,
}

impl WorldParams {
    pub(crate) fn for_users(users: u64) -> Self {
        Self {
            users,
            dms: users / 8,
            groups: users / 40,
            group_size: (3, 50),
            channels: 3,
            channel_size: (200, users.clamp(200, 1_500)),
            zipf_s: 1.1,
        }
    }
}

/// One operation of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// `sender` posts `count` messages in `conv`.
    Messages {
        conv: usize,
        sender: u64,
        count: u32,
    },
    /// `reader` opens `conv` and scrolls through everything new.
    Read { conv: usize, reader: u64 },
}

/// The generator: the same seed yields the same world and steps.
pub(crate) struct Workload {
    pub(crate) rng: ChaCha8Rng,
    zipf: Zipf<f64>,
    pub(crate) convs: Vec<ConvSpec>,
}

impl Workload {
    pub(crate) fn new(seed: u64, p: &WorldParams) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut convs = Vec::new();
        let mut next_id = 1u64;
        let pick_members = |rng: &mut ChaCha8Rng, n: u64| {
            let n = n.min(p.users);
            let mut set = std::collections::BTreeSet::new();
            while (set.len() as u64) < n {
                set.insert(rng.random_range(0..p.users));
            }
            set.into_iter().collect::<Vec<_>>()
        };
        for (kind, count) in [
            (Kind::Dm, p.dms),
            (Kind::Group, p.groups),
            (Kind::Channel, p.channels),
        ] {
            for _ in 0..count {
                let size = match kind {
                    Kind::Dm => 2,
                    Kind::Group => rng.random_range(p.group_size.0..=p.group_size.1),
                    Kind::Channel => rng.random_range(p.channel_size.0..=p.channel_size.1),
                };
                let members = pick_members(&mut rng, size);
                convs.push(ConvSpec {
                    id: next_id,
                    kind,
                    members,
                });
                next_id += 1;
            }
        }
        // Activity rank is independent of kind: shuffle before ranking.
        for i in (1..convs.len()).rev() {
            let j = rng.random_range(0..=i);
            convs.swap(i, j);
        }
        #[allow(clippy::cast_precision_loss)]
        let zipf =
            Zipf::new(convs.len().max(1) as f64, p.zipf_s).unwrap_or_else(|_| unreachable_zipf());
        Self { rng, zipf, convs }
    }

    /// The next step: 40 % bursts of messages, 60 % reading sessions.
    pub(crate) fn next_step(&mut self) -> Step {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let conv = (self.zipf.sample(&mut self.rng) as usize)
            .saturating_sub(1)
            .min(self.convs.len() - 1);
        let members = &self.convs[conv].members;
        let who = members[self.rng.random_range(0..members.len())];
        if self.rng.random_bool(0.4) {
            Step::Messages {
                conv,
                sender: who,
                count: self.rng.random_range(1..=6),
            }
        } else {
            Step::Read { conv, reader: who }
        }
    }
}

fn unreachable_zipf() -> Zipf<f64> {
    // Zipf::new only fails for n < 1 or s < 0, both excluded above.
    #[allow(clippy::expect_used)]
    Zipf::new(1.0, 1.0).expect("valid zipf parameters")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_operations() {
        let p = WorldParams::for_users(500);
        let mut a = Workload::new(7, &p);
        let mut b = Workload::new(7, &p);
        assert_eq!(a.convs.len(), b.convs.len());
        for (x, y) in a.convs.iter().zip(&b.convs) {
            assert_eq!((x.id, &x.members), (y.id, &y.members));
        }
        for _ in 0..1_000 {
            assert_eq!(a.next_step(), b.next_step());
        }
        let mut c = Workload::new(8, &p);
        let differs = (0..100).any(|_| a.next_step() != c.next_step());
        assert!(differs, "a different seed must give a different stream");
    }
}
