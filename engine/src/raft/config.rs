//! Static configuration of one Raft core.

use thiserror::Error;

/// Everything a core needs to start; fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: u64,
    /// Ids of all voters, this node included. Membership never changes.
    pub voters: Vec<u64>,
    /// Minimum election timeout in ticks; each timeout is drawn from
    /// `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u64,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: u64,
    /// Seed of the core's random generator (election timeouts).
    pub seed: u64,
    /// Run a pre-vote round before a real election (thesis §9.6), so a node
    /// rejoining from a partition does not disrupt a healthy leader.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within an election
    /// timeout steps down (thesis §6.2), so clients are not held forever.
    pub check_quorum: bool,
    /// At most this many appends in flight to one follower.
    pub max_inflight_appends: usize,
    /// At most this many payload bytes of appends in flight to one follower.
    pub max_inflight_bytes: u64,
    /// At most this many entries in one append.
    pub max_append_entries: usize,
    /// Payload bytes above which an append is cut (it holds at least one entry).
    pub max_append_bytes: usize,
    /// Proposals are refused while this many entries wait to be committed.
    pub max_uncommitted_entries: u64,
    /// ... or while this many payload bytes do (one entry is always let in).
    pub max_uncommitted_bytes: u64,
    /// Payload bytes of committed entries handed out in one `Ready`.
    pub max_apply_bytes: usize,
    /// Size of one `InstallSnapshot` chunk.
    pub snapshot_chunk_bytes: usize,
    /// A leader keeps the log a follower still needs behind a new snapshot
    /// (after a snapshot it is being sent, or after the match of one that
    /// answered lately) while that holds at most this many bytes (payload
    /// plus 64 bytes an entry). See `compaction.rs`.
    pub max_log_kept_for_transfer_bytes: u64,
    /// How a leader confirms it still leads before serving a read.
    pub read_mode: ReadMode,
    /// For lease reads: how far apart, in percent, two members' clocks may
    /// run (the rate, not the offset). The lease is shortened by as much.
    pub max_clock_drift_percent: u64,
}

/// How a leader makes sure it still leads before it serves a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// ReadIndex (thesis §6.4): each read waits for a heartbeat round that
    /// a majority answers after it arrived. Safe whatever the clocks do.
    #[default]
    Index,
    /// Lease (thesis §6.4.1): a read is served at once while a majority
    /// answered a heartbeat sent less than a lease ago. A member that heard
    /// from the leader (or started) within an election timeout grants no
    /// vote (check-quorum's rule), so no other leader can exist during the
    /// lease, provided no member's clock runs more than
    /// `max_clock_drift_percent` faster than the leader's. Falls back to a
    /// round when the lease has lapsed.
    Lease,
}

impl Config {
    /// A configuration with sensible defaults for node `id` among `voters`.
    pub fn new(id: u64, voters: Vec<u64>) -> Self {
        Config {
            id,
            voters,
            election_ticks: 10,
            heartbeat_ticks: 2,
            seed: id,
            pre_vote: true,
            check_quorum: true,
            max_inflight_appends: 64,
            max_inflight_bytes: 8 << 20,
            max_append_entries: 4096,
            max_append_bytes: 1 << 20,
            max_uncommitted_entries: 1 << 16,
            max_uncommitted_bytes: 64 << 20,
            max_apply_bytes: 4 << 20,
            snapshot_chunk_bytes: 256 << 10,
            max_log_kept_for_transfer_bytes: 256 << 20,
            read_mode: ReadMode::Index,
            max_clock_drift_percent: 10,
        }
    }

    /// Ticks a lease lasts from the moment its heartbeat round was sent: a
    /// follower that received it grants no vote for `election_ticks` of its
    /// own ticks (at least `election_ticks - 1` whole ones, as its first
    /// tick may come at once), shortened by the clock drift allowed and by
    /// one of the leader's own ticks for the same reason.
    pub fn lease_ticks(&self) -> u64 {
        let followers_ticks = self.election_ticks.saturating_sub(1);
        let drift = self.max_clock_drift_percent.min(100);
        (followers_ticks * (100 - drift) / 100).saturating_sub(1)
    }

    /// Checks the configuration for values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if !self.voters.contains(&self.id) {
            return Err(ConfigError::NotAVoter(self.id));
        }
        let mut sorted = self.voters.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.voters.len() || sorted.contains(&0) {
            return Err(ConfigError::BadVoters);
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::Timing);
        }
        if self.read_mode == ReadMode::Lease && (!self.check_quorum || self.lease_ticks() == 0) {
            return Err(ConfigError::Lease);
        }
        if self.max_inflight_appends == 0
            || self.max_inflight_bytes == 0
            || self.max_append_entries == 0
            || self.snapshot_chunk_bytes == 0
            || self.max_uncommitted_bytes == 0
            || self.max_uncommitted_entries == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        Ok(())
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Node ids start at 1; 0 means "nobody".
    #[error("node id must not be 0")]
    ZeroId,
    /// The node must be one of the voters.
    #[error("node {0} is not among the voters")]
    NotAVoter(u64),
    /// Voter ids must be distinct and non-zero.
    #[error("voter ids must be distinct and non-zero")]
    BadVoters,
    /// Heartbeats must be more frequent than elections.
    #[error("heartbeat_ticks must be > 0 and < election_ticks")]
    Timing,
    /// A limit set to zero would stall replication.
    #[error("replication limits must be > 0")]
    ZeroLimit,
    /// Lease reads rest on check-quorum, and on an election timeout long
    /// enough to leave a lease once drift is allowed for.
    #[error("lease reads need check_quorum and an election timeout longer than the drift allowed")]
    Lease,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_are_distinct_and_none_is_zero() {
        let voters = |v: Vec<u64>| Config::new(1, v).validate();
        assert!(matches!(voters(vec![1, 2, 2]), Err(ConfigError::BadVoters)));
        assert!(matches!(voters(vec![1, 0, 2]), Err(ConfigError::BadVoters)));
        assert!(voters(vec![1, 2, 3]).is_ok());
    }

    #[test]
    fn heartbeats_must_tick_and_come_more_often_than_elections() {
        let timing = |heartbeat, election| {
            let mut c = Config::new(1, vec![1, 2, 3]);
            c.heartbeat_ticks = heartbeat;
            c.election_ticks = election;
            c.validate()
        };
        assert!(matches!(timing(0, 10), Err(ConfigError::Timing)));
        assert!(matches!(timing(10, 10), Err(ConfigError::Timing)));
        assert!(timing(2, 10).is_ok());
    }
}
