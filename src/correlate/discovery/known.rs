//! The reviewed table of attribute keys whose sharing is known, seeded from the OpenTelemetry
//! semantic-convention names. The conventions say what a key means, not whether users may share
//! its values; this table is where that judgement is written down, with its reason.
//!
//! Exact keys win over prefixes; the longest prefix wins. Keys not listed are judged by their
//! values alone (see `verdict`).

/// What the table knows of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Values are labels every user may share (a line number, a thread, a model name).
    Shared(&'static str),
    /// Values name one conversation/session/message and must never serve two users, whatever
    /// they look like.
    Identity(&'static str),
    Unknown,
}

/// Exact keys. Keep sorted by group; every entry says why.
const EXACT: &[(&str, Known)] = &[
    // GenAI: a conversation belongs to one user; an agent definition or a model serves everyone.
    (
        "gen_ai.conversation.id",
        Known::Identity("a conversation belongs to one user"),
    ),
    (
        "gen_ai.response.id",
        Known::Identity("a model response answers one request"),
    ),
    (
        "gen_ai.agent.id",
        Known::Shared("an agent definition every user shares"),
    ),
    (
        "gen_ai.agent.name",
        Known::Shared("an agent definition every user shares"),
    ),
    ("gen_ai.request.model", Known::Shared("a model name")),
    ("gen_ai.response.model", Known::Shared("a model name")),
    ("gen_ai.system", Known::Shared("a provider name")),
    ("gen_ai.provider.name", Known::Shared("a provider name")),
    ("gen_ai.operation.name", Known::Shared("an operation name")),
    (
        "gen_ai.tool.name",
        Known::Shared("a tool definition every user shares"),
    ),
    ("gen_ai.tool.type", Known::Shared("a tool kind")),
    (
        "gen_ai.data_source.id",
        Known::Shared("a data source every user queries"),
    ),
    // Sessions and messages.
    (
        "session.id",
        Known::Identity("a session belongs to one user"),
    ),
    (
        "session.previous_id",
        Known::Identity("a session belongs to one user"),
    ),
    (
        "messaging.message.id",
        Known::Identity("a message is sent for one request"),
    ),
    (
        "messaging.message.conversation_id",
        Known::Identity("a conversation belongs to one user"),
    ),
    // Databases: the system and names are shared; the statement text is not an identity.
    ("db.system", Known::Shared("a database system")),
    ("db.system.name", Known::Shared("a database system")),
    ("db.name", Known::Shared("a database every user queries")),
    (
        "db.namespace",
        Known::Shared("a database every user queries"),
    ),
    ("db.operation", Known::Shared("an operation name")),
    ("db.operation.name", Known::Shared("an operation name")),
    (
        "db.collection.name",
        Known::Shared("a table every user queries"),
    ),
    ("db.sql.table", Known::Shared("a table every user queries")),
    ("db.statement", Known::Shared("query text")),
    ("db.query.text", Known::Shared("query text")),
    ("db.user", Known::Shared("the service's database account")),
    (
        "db.connection_string",
        Known::Shared("the service's database"),
    ),
    ("messaging.system", Known::Shared("a messaging system")),
    (
        "messaging.destination.name",
        Known::Shared("a queue or topic every user's messages use"),
    ),
    ("messaging.operation", Known::Shared("an operation name")),
    ("rpc.system", Known::Shared("an RPC system")),
    ("rpc.service", Known::Shared("a service name")),
    ("rpc.method", Known::Shared("a method name")),
    ("error.type", Known::Shared("an error class")),
    ("event.name", Known::Shared("an event name")),
    ("span.kind", Known::Shared("a span kind")),
    ("component", Known::Shared("a component name")),
];

/// Prefixes (ending in `.`): whole namespaces of labels.
const PREFIXES: &[(&str, Known)] = &[
    (
        "thread.",
        Known::Shared("a thread serves many requests by design"),
    ),
    ("code.", Known::Shared("a code location")),
    (
        "http.",
        Known::Shared("HTTP method, route, status and sizes"),
    ),
    ("url.", Known::Shared("a URL or its parts")),
    ("server.", Known::Shared("the server's address")),
    (
        "client.",
        Known::Shared("a client address (shared behind NAT)"),
    ),
    ("network.", Known::Shared("network protocol facts")),
    ("net.", Known::Shared("network protocol facts")),
    ("user_agent.", Known::Shared("a browser or client build")),
    ("host.", Known::Shared("the host")),
    ("process.", Known::Shared("the process")),
    ("os.", Known::Shared("the operating system")),
    ("service.", Known::Shared("the service")),
    ("deployment.", Known::Shared("the deployment")),
    ("telemetry.", Known::Shared("the instrumentation")),
    ("otel.", Known::Shared("the instrumentation")),
    ("k8s.", Known::Shared("the Kubernetes object")),
    ("container.", Known::Shared("the container")),
    ("cloud.", Known::Shared("the cloud account or region")),
    ("faas.", Known::Shared("the function")),
    ("vcs.", Known::Shared("the source revision")),
    ("exception.", Known::Shared("an exception class or message")),
    ("log.", Known::Shared("the log file or record facts")),
    (
        "gen_ai.request.",
        Known::Shared("request parameters (temperature, max tokens)"),
    ),
    ("gen_ai.usage.", Known::Shared("token counts")),
    ("gen_ai.openai.", Known::Shared("provider request facts")),
];

/// What the table says of `key`.
pub fn lookup(key: &str) -> Known {
    if let Some((_, k)) = EXACT.iter().find(|(name, _)| *name == key) {
        return *k;
    }
    PREFIXES
        .iter()
        .filter(|(p, _)| key.starts_with(p))
        .max_by_key(|(p, _)| p.len())
        .map_or(Known::Unknown, |(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert!(matches!(
            lookup("gen_ai.conversation.id"),
            Known::Identity(_)
        ));
        assert!(matches!(lookup("gen_ai.agent.id"), Known::Shared(_)));
        assert!(matches!(lookup("gen_ai.request.model"), Known::Shared(_)));
        assert!(matches!(
            lookup("gen_ai.request.temperature"),
            Known::Shared(_)
        ));
        assert!(matches!(lookup("thread.id"), Known::Shared(_)));
        assert!(matches!(lookup("code.lineno"), Known::Shared(_)));
        assert!(matches!(lookup("http.route"), Known::Shared(_)));
        assert_eq!(lookup("db.session.instance_id"), Known::Unknown);
        assert_eq!(lookup("agent_factory.instance_id"), Known::Unknown);
        assert_eq!(lookup("threadpool.handle"), Known::Unknown);
    }

    #[test]
    fn prefixes_end_with_a_dot() {
        assert!(PREFIXES.iter().all(|(p, _)| p.ends_with('.')));
    }
}
