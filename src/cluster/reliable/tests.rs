//! The link layer over a network that loses messages (as core NATS does when a server dies) and nodes that start
//! again: what one node sends another arrives in order, once, as long as both live; after a receiver's restart,
//! nothing is lost and order holds (a frame may come twice); after a sender's restart, its new frames all arrive.

use std::collections::VecDeque;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// A few nodes on one network: FIFO per ordered pair (NATS keeps a publisher's order), each message lost with
/// probability `loss` while `lossy` is on.
struct Net {
    nodes: Vec<Reliable>,
    /// What each node delivered, per sender: (sender, frame).
    delivered: Vec<Vec<(usize, Bytes)>>,
    wire: VecDeque<(usize, Bytes)>,
    now: Millis,
    rng: u64,
    loss: u64,
    lossy: bool,
}

impl Net {
    fn new(count: usize, seed: u64, loss_percent: u64) -> Net {
        Net {
            nodes: (0..count).map(|n| Reliable::new(n, count, 1_000)).collect(),
            delivered: vec![Vec::new(); count],
            wire: VecDeque::new(),
            now: 1_000,
            rng: seed | 1,
            loss: loss_percent,
            lossy: true,
        }
    }

    fn roll(&mut self) -> u64 {
        // xorshift64: a fixed sequence per seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 100
    }

    fn send(&mut self, from: usize, to: usize, label: String) {
        self.nodes[from].send(to, Bytes::from(label), self.now);
    }

    /// One millisecond: every node's output onto the wire (some lost), everything on the wire delivered, ticks.
    fn step(&mut self) {
        for node in 0..self.nodes.len() {
            while let Some((to, bytes)) = self.nodes[node].poll_output() {
                if self.lossy && self.roll() < self.loss {
                    continue;
                }
                self.wire.push_back((to, bytes));
            }
        }
        while let Some((to, bytes)) = self.wire.pop_front() {
            if let Some(frame) = self.nodes[to].receive(&bytes, self.now).unwrap() {
                let from: usize = String::from_utf8_lossy(&frame[..1]).parse().unwrap();
                self.delivered[to].push((from, frame));
            }
        }
        self.now += 1;
        for node in &mut self.nodes {
            node.tick(self.now);
        }
    }

    /// Steps without loss until every window is empty (bounded).
    fn settle(&mut self) {
        self.lossy = false;
        for _ in 0..5_000 {
            self.step();
            let idle =
                (0..self.nodes.len()).all(|n| (0..self.nodes.len()).all(|m| self.nodes[n].unacknowledged(m) == 0));
            if idle && self.wire.is_empty() {
                return;
            }
        }
        panic!("windows never emptied");
    }

    fn from(&self, to: usize, from: usize) -> Vec<String> {
        self.delivered[to]
            .iter()
            .filter(|(f, _)| *f == from)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

fn labels(from: usize, to: usize, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{from}>{to}#{i}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Both nodes live: exactly once, in order, whatever was lost.
    #[test]
    fn in_order_once_over_a_lossy_network(seed in any::<u64>(), loss in 0u64..60, count in 1usize..300) {
        let mut net = Net::new(3, seed, loss);
        for i in 0..count {
            net.send(0, 1, format!("0>1#{i}"));
            if i % 3 == 0 {
                net.send(2, 1, format!("2>1#{i}"));
            }
            net.send(1, 0, format!("1>0#{i}"));
            if i % 7 == 0 {
                net.step();
            }
        }
        net.settle();
        for node in &mut net.nodes {
            prop_assert_eq!(node.poll_restarted(), None, "a restart where none was");
        }
        prop_assert_eq!(net.from(1, 0), labels(0, 1, 0..count));
        prop_assert_eq!(net.from(0, 1), labels(1, 0, 0..count));
        let from_two: Vec<String> = (0..count).filter(|i| i % 3 == 0).map(|i| format!("2>1#{i}")).collect();
        prop_assert_eq!(net.from(1, 2), from_two);
    }

    /// The receiver starts again (its state gone) mid-stream: nothing is lost and order holds; what its previous
    /// start had already delivered may come again.
    #[test]
    fn a_receiver_started_again_loses_nothing(seed in any::<u64>(), loss in 0u64..40, cut in 1usize..150) {
        let mut net = Net::new(2, seed, loss);
        for i in 0..cut {
            net.send(0, 1, format!("0>1#{i}"));
            net.step();
        }
        let before = net.from(1, 0).len();
        // A restart is news only to a node that heard from the earlier start (an acknowledgment).
        let heard = net.nodes[0].peer_epoch[1] != 0;
        net.nodes[1] = Reliable::new(1, 2, 5_000);
        net.delivered[1].clear();
        net.send(1, 0, "1>0#hello".into());
        for i in cut..cut + 50 {
            net.send(0, 1, format!("0>1#{i}"));
            net.step();
        }
        net.settle();
        let after = net.from(1, 0);
        let all = labels(0, 1, 0..cut + 50);
        // A contiguous run that ends with the last frame and starts no later than the first one not delivered before.
        prop_assert_eq!(net.nodes[0].poll_restarted(), heard.then_some(1), "the restart went unnoticed");
        let start = all.len() - after.len();
        prop_assert!(start <= before, "lost frames: delivered {before} before the restart, {after:?} after");
        prop_assert_eq!(&after[..], &all[start..]);
    }

    /// The sender starts again: what its previous start had not seen acknowledged may be lost, everything the new
    /// start sends arrives once, in order, after what arrived from the old one.
    #[test]
    fn a_sender_started_again_is_followed(seed in any::<u64>(), loss in 0u64..40, cut in 1usize..150) {
        let mut net = Net::new(2, seed, loss);
        for i in 0..cut {
            net.send(0, 1, format!("0>1#{i}"));
            net.step();
        }
        net.nodes[0] = Reliable::new(0, 2, 5_000);
        for i in 0..60 {
            net.send(0, 1, format!("0>1+new#{i}"));
            net.step();
        }
        net.settle();
        let got = net.from(1, 0);
        let old = got.iter().take_while(|l| l.starts_with("0>1#")).count();
        prop_assert_eq!(&got[..old], &labels(0, 1, 0..old)[..]);
        let new: Vec<String> = (0..60).map(|i| format!("0>1+new#{i}")).collect();
        prop_assert_eq!(&got[old..], &new[..]);
    }
}

/// While NATS is lost nothing is resent; when it is back, the window goes again at once.
#[test]
fn the_window_goes_again_when_nats_is_back() {
    let mut a = Reliable::new(0, 2, 1_000);
    a.send(1, Bytes::from_static(b"x"), 0);
    assert!(a.poll_output().is_some());
    a.link_state(false, 10);
    a.tick(1_000);
    assert!(a.poll_output().is_none(), "resent while cut off");
    assert_eq!(a.next_deadline(), None);
    a.link_state(true, 1_001);
    assert!(a.poll_output().is_some(), "not resent on the way back");
    assert_eq!(a.unacknowledged(1), 1);
}

/// Bytes that are not a link message, or name no peer, are refused with a reason.
#[test]
fn bad_bytes_are_refused() {
    let mut a = Reliable::new(0, 2, 1_000);
    assert!(matches!(a.receive(&[0xff, 0xff], 0), Err(LinkError::Undecodable(_))));
    assert_eq!(a.receive(&[], 0), Err(LinkError::UnknownKind));
    let mut b = Reliable::new(1, 2, 1_000);
    b.send(0, Bytes::from_static(b"x"), 0);
    let (_, bytes) = b.poll_output().unwrap();
    let mut c = Reliable::new(1, 2, 1_000);
    assert_eq!(c.receive(&bytes, 0), Err(LinkError::NotAPeer(1)), "a node's own frames");
}

/// Flow control: at most [`IN_FLIGHT`] frames out to a peer that does not acknowledge; its acknowledgments let the
/// rest go, in order; a timeout sends the window again and waits twice as long for the next one.
#[test]
fn a_peer_that_does_not_acknowledge_gets_a_window_at_a_time() {
    let mut a = Reliable::new(0, 2, 1_000);
    let mut b = Reliable::new(1, 2, 1_000);
    let total = usize::try_from(IN_FLIGHT).unwrap() + 100;
    for i in 0..total {
        a.send(1, Bytes::from(i.to_string()), 0);
    }
    let mut out = Vec::new();
    while let Some((_, bytes)) = a.poll_output() {
        out.push(bytes);
    }
    assert_eq!(out.len() as u64, IN_FLIGHT, "more out than the window");
    let mut delivered = 0;
    for bytes in &out[..100] {
        delivered += usize::from(b.receive(bytes, 1).unwrap().is_some());
    }
    assert_eq!(delivered, 100);
    b.tick(1 + ACK_DELAY_MS);
    let (_, ack) = b.poll_output().unwrap();
    a.receive(&ack, 10).unwrap();
    let mut more = 0;
    while a.poll_output().is_some() {
        more += 1;
    }
    assert_eq!(more, 100, "the acknowledgment let the rest go");
    assert_eq!(a.next_deadline(), Some(10 + RESEND_AFTER_MS));
    a.tick(10 + RESEND_AFTER_MS);
    let mut again = 0;
    while a.poll_output().is_some() {
        again += 1;
    }
    assert_eq!(again as u64, IN_FLIGHT, "the timeout's pass");
    assert_eq!(
        a.next_deadline(),
        Some(10 + RESEND_AFTER_MS + 2 * RESEND_AFTER_MS),
        "no backoff"
    );
}
