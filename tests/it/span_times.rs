//! Span times a careless client sends: an end centuries ahead must not stretch a use over every
//! later one (a false overlap), an end before the start is taken at the start; both counted.

use crate::util::*;

const SESSION_WATCH: &str = "[[watch]]\nname = \"db_session\"\nattribute = \"db.session_id\"\npolicy = \"concurrent\"\nscope = \"process\"\n";

fn session_use(
    user: &str,
    trace: u128,
    start: u64,
    end: u64,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let mut s = span(
        trace,
        trace as u64 | 1,
        &[("user.id", user), ("db.session_id", "s1")],
    );
    s.start_time_unix_nano = start;
    s.end_time_unix_nano = end;
    traces("api", "pod-1", vec![s])
}

#[test]
fn a_span_ending_centuries_ahead_does_not_overlap_every_later_use() {
    const S: u64 = 1_000_000_000;
    let s = Server::start(SESSION_WATCH);
    let now = now_ns();
    let century = 100 * 365 * 24 * 3600 * S;
    assert_eq!(
        s.post_traces(&session_use("alice", 1, now - 10 * S, now + century))
            .status,
        200
    );
    // Bob's use comes seconds after Alice's started: only the impossible end made them overlap.
    assert_eq!(
        s.post_traces(&session_use("bob", 2, now - 5 * S, now - 4 * S))
            .status,
        200
    );
    assert_eq!(s.findings().len(), 0, "{:?}", s.findings());
    assert_eq!(
        s.metric(r#"crosstalk_clamped_total{reason="end_in_future"}"#),
        1.0
    );

    // An end before the start: counted, and the span is still used (at its start).
    assert_eq!(
        s.post_traces(&session_use("carol", 3, now - 2 * S, now - 3 * S))
            .status,
        200
    );
    assert_eq!(
        s.metric(r#"crosstalk_clamped_total{reason="end_before_start"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"crosstalk_clamped_total{reason="start_in_future"}"#),
        0.0
    );
    // A real overlap is still found: Dave's use spans Carol's instant.
    assert_eq!(
        s.post_traces(&session_use("dave", 4, now - 3 * S, now - S))
            .status,
        200
    );
    let f = s.findings();
    assert_eq!(f.len(), 1, "{f:?}");
    let mut users: Vec<&str> = f[0]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["carol", "dave"]);
}
