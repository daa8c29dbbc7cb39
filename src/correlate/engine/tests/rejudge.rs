//! Conflicts already in the store at start-up are judged again.

use std::sync::Arc;

use super::*;

/// A store with two users bound to one instance and no finding (a crash between binding and
/// judging, an older release): the restored engine raises it and hands it to the first commit.
#[test]
fn conflicting_bindings_restored_without_a_finding_are_judged_again() {
    for (policy, users, found) in [
        ("exclusive", [("alice", 1, 2), ("bob", 3, 4)], true),
        ("concurrent", [("alice", 1, 5), ("bob", 3, 4)], true),
        ("concurrent", [("alice", 1, 2), ("bob", 3, 4)], false),
        ("allow", [("alice", 1, 2), ("bob", 3, 4)], false),
    ] {
        let cfg = config(policy, "process", "user");
        let mut first = Engine::new(&cfg, Arc::new(Metrics::new()));
        let mut fx = Effects::default();
        for (user, s, e) in users {
            // Separate instances, so the first engine judges nothing; bound to one below.
            first.ingest(
                vec![obs(Some(user), None, user, s, e, "p")],
                at(10),
                &mut fx,
            );
        }
        let mut bindings = fx.bindings.clone();
        for b in &mut bindings {
            b.instance = "f".into();
        }
        let mut second = Engine::new(&cfg, Arc::new(Metrics::new()));
        second.restore(Restored {
            scopes: restored_scopes(&fx),
            bindings,
            ..Restored::default()
        });
        let mut fx = Effects::default();
        second.tick(at(20), &mut fx);
        assert_eq!(second.findings().len(), usize::from(found), "{policy}");
        assert_eq!(fx.findings.len(), usize::from(found), "{policy}");
        if found {
            assert_eq!(second.findings()[0].users, ["alice", "bob"]);
            assert!(fx.news[0].new, "counted and alerted as a new finding");
            // Judged once: a later use of the instance grows nothing.
            let mut fx = Effects::default();
            second.ingest(
                vec![obs(Some("alice"), None, "f", 7, 8, "p")],
                at(21),
                &mut fx,
            );
            assert!(fx.news.is_empty(), "{policy}: {:?}", fx.news);
        }
    }
}
