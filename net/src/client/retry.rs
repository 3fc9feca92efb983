//! How a client of this store treats an answer that is not a result, and
//! which node it talks to next: the one rule kv-cli, kv-bench and the
//! simulation's workload follow. Each keeps its own I/O (kv-cli blocks,
//! kv-bench pipelines many connections, the simulation runs on madsim);
//! what an error means and where to go after it are decided here, next to
//! the renderings of the node's failures (`FailKind::message`), so the two
//! cannot drift apart.

use std::net::SocketAddr;

use kv_proto::client::error::Kind;

use crate::api::FailKind;

/// What an error answer says about the request that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It surely did not happen: send it again. `elsewhere`: to another
    /// node (this one knows no leader, or cannot serve at all); otherwise
    /// to the same one after a pause (it is overloaded, or its leader just
    /// changed and a redirect will follow).
    Retry {
        /// Why, in a word or two (for counts and messages).
        why: &'static str,
        /// Whether another node should get it.
        elsewhere: bool,
    },
    /// It may or may not have happened. A write in an exactly-once session
    /// may be sent again (the session answers it once); anything else is
    /// reported as unknown.
    Unknown(&'static str),
    /// A definite answer: report it (a bad request, a refusal, a session
    /// that is gone).
    Final,
}

/// The verdict on a text-protocol `ERR` line (without the `ERR `).
pub fn text_verdict(msg: &str) -> Verdict {
    if msg == "no leader" {
        return Verdict::Retry {
            why: "no leader",
            elsewhere: true,
        };
    }
    for kind in FailKind::ALL {
        if msg == kind.message() {
            return fail_verdict(kind);
        }
    }
    Verdict::Final
}

/// The verdict on a binary-protocol error (its kind, and its message,
/// which tells a timeout from another unknown outcome).
pub fn binary_verdict(kind: Kind, msg: &str) -> Verdict {
    match kind {
        Kind::NoLeader => Verdict::Retry {
            why: "no leader",
            elsewhere: true,
        },
        Kind::NotApplied => fail_verdict(FailKind::NotApplied),
        Kind::Overloaded => fail_verdict(FailKind::Overloaded),
        Kind::Unavailable => fail_verdict(FailKind::Unavailable),
        Kind::Unknown => match text_verdict(msg) {
            unknown @ Verdict::Unknown(_) => unknown,
            _ => fail_verdict(FailKind::Unknown),
        },
        Kind::BadRequest | Kind::Refused => Verdict::Final,
    }
}

/// The verdict on a node's failure.
pub fn fail_verdict(kind: FailKind) -> Verdict {
    let retry = |why, elsewhere| Verdict::Retry { why, elsewhere };
    match kind {
        FailKind::NotApplied => retry("not applied", false),
        FailKind::Overloaded => retry("overloaded", false),
        FailKind::Unavailable => retry("unavailable", true),
        FailKind::Unknown => Verdict::Unknown("outcome unknown"),
        FailKind::Timeout => Verdict::Unknown("timeout"),
        FailKind::ShuttingDown => Verdict::Unknown("shutting down"),
    }
}

/// Most nodes a client learns of through redirects, beyond those it was
/// given: a node cannot make it remember addresses without end.
const MAX_LEARNED: usize = 16;

/// The nodes a client knows and the one it talks to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    addrs: Vec<SocketAddr>,
    given: usize,
    current: usize,
}

impl Endpoints {
    /// The nodes `addrs`, starting at the one at `start` (modulo their
    /// number); None if there are none.
    pub fn new(addrs: Vec<SocketAddr>, start: usize) -> Option<Self> {
        if addrs.is_empty() {
            return None;
        }
        let current = start % addrs.len();
        Some(Endpoints {
            given: addrs.len(),
            addrs,
            current,
        })
    }

    /// The node to talk to now.
    pub fn current(&self) -> SocketAddr {
        // Never empty, and every move keeps `current` within it.
        self.addrs[self.current]
    }

    /// Every node known, in order.
    pub fn all(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Talks to the node at `index` (modulo their number) from now on.
    pub fn go_to(&mut self, index: usize) {
        self.current = index % self.addrs.len();
    }

    /// Follows a redirect to `to` (an address as the node wrote it): true
    /// if the node to talk to changed. An address not known yet is learnt
    /// (up to a bound); one that does not parse is ignored.
    pub fn redirect(&mut self, to: &str) -> bool {
        let Ok(addr) = to.trim().parse::<SocketAddr>() else {
            return false;
        };
        let before = self.current;
        match self.addrs.iter().position(|a| *a == addr) {
            Some(i) => self.current = i,
            None if self.addrs.len() < self.given + MAX_LEARNED => {
                self.addrs.push(addr);
                self.current = self.addrs.len() - 1;
            }
            None => return false,
        }
        self.current != before
    }

    /// Moves on to the next node.
    pub fn rotate(&mut self) {
        self.current = (self.current + 1) % self.addrs.len();
    }

    /// `addr` failed: if it is still the node to talk to, move on (another
    /// connection may have moved already).
    pub fn rotate_from(&mut self, addr: SocketAddr) {
        if self.current() == addr {
            self.rotate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClientReply;
    use crate::client::binary::reply_to_response;
    use crate::client::server::reply_to_text;
    use crate::client::text::Response;
    use kv_proto::client::response::Result as Res;

    #[test]
    fn both_protocols_renderings_of_a_failure_get_the_verdict_of_the_failure() {
        for kind in FailKind::ALL {
            let Response::Err(msg) = reply_to_text(ClientReply::Failed(kind)) else {
                panic!("{kind:?} is rendered as an error line");
            };
            assert_eq!(text_verdict(&msg), fail_verdict(kind), "text {kind:?}");
            let Some(Res::Error(e)) = reply_to_response(1, ClientReply::Failed(kind)).result else {
                panic!("{kind:?} is rendered as a binary error");
            };
            let k = Kind::try_from(e.kind).unwrap_or(Kind::BadRequest);
            assert_eq!(
                binary_verdict(k, &e.message),
                fail_verdict(kind),
                "binary {kind:?}"
            );
        }
        let Response::Err(msg) = reply_to_text(ClientReply::NoLeader) else {
            panic!("no leader is an error line");
        };
        let elsewhere = Verdict::Retry {
            why: "no leader",
            elsewhere: true,
        };
        assert_eq!(text_verdict(&msg), elsewhere);
        assert_eq!(binary_verdict(Kind::NoLeader, "no leader"), elsewhere);
    }

    #[test]
    fn only_a_failure_that_surely_did_nothing_is_retried_outside_a_session() {
        assert_eq!(text_verdict("key too long (5 > 4 bytes)"), Verdict::Final);
        assert_eq!(
            text_verdict(kv_engine::kv::NO_SESSION),
            Verdict::Final,
            "a session that is gone cannot say what became of a write"
        );
        assert_eq!(binary_verdict(Kind::BadRequest, "x"), Verdict::Final);
        assert_eq!(
            text_verdict("timeout: outcome unknown"),
            Verdict::Unknown("timeout")
        );
        assert_eq!(
            fail_verdict(FailKind::Unavailable),
            Verdict::Retry {
                why: "unavailable",
                elsewhere: true
            },
            "a node whose disk failed cannot serve: go to another"
        );
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn endpoints_follow_redirects_and_learn_few_new_nodes() {
        assert!(Endpoints::new(Vec::new(), 0).is_none());
        let mut e = Endpoints::new(vec![addr(1), addr(2), addr(3)], 4).unwrap();
        assert_eq!(e.current(), addr(2));
        assert!(e.redirect("127.0.0.1:3"));
        assert!(!e.redirect("127.0.0.1:3"), "already there");
        assert!(!e.redirect("not an address"));
        assert_eq!(e.current(), addr(3));
        e.rotate_from(addr(2));
        assert_eq!(e.current(), addr(3), "another connection moved already");
        e.rotate_from(addr(3));
        assert_eq!(e.current(), addr(1));
        for port in 100..200 {
            e.redirect(&addr(port).to_string());
        }
        assert_eq!(
            e.all().len(),
            3 + MAX_LEARNED,
            "learnt addresses are bounded"
        );
    }
}
