//! What the Redis servers behind the store keep, and so what a 202 survives: a process crash
//! (always: the report is in Redis), a Redis crash (AOF, fsync confirmed), a failover (the
//! write was on enough replicas before the answer).

use super::super::Durability;

/// What the server said of its persistence (`INFO persistence`, `INFO memory`, `INFO server`,
/// `INFO replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    pub version: String,
    pub aof_enabled: bool,
    /// `always`, `everysec` or `no`; empty when the server does not say.
    pub appendfsync: String,
    pub maxmemory_policy: String,
    /// Replicas connected to the master (on a cluster, the fewest any master has).
    pub replicas: u32,
}

impl Persistence {
    /// From the text of `INFO` (sections persistence, memory, server, replication) and, when
    /// the server allows it, `CONFIG GET appendfsync` (INFO does not carry it).
    pub fn from_info(info: &str, appendfsync: Option<&str>) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            version: field("redis_version"),
            aof_enabled: field("aof_enabled") == "1",
            appendfsync: appendfsync.unwrap_or_default().to_owned(),
            maxmemory_policy: field("maxmemory_policy"),
            replicas: field("connected_slaves").parse().unwrap_or(0),
        }
    }

    /// `WAITAOF` exists from Redis 7.2 (and in Valkey, which answers `redis_version` 7.2.4).
    pub fn supports_waitaof(&self) -> bool {
        let mut parts = self
            .version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        self.aof_enabled && (major, minor) >= (7, 2)
    }

    /// Why this server could lose or refuse what the gateway acknowledged, if it could.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.aof_enabled {
            problems.push(
                "appendonly is off: a Redis restart loses every accepted report and can send a \
                 batch twice (set `appendonly yes`)"
                    .to_owned(),
            );
        }
        if self.maxmemory_policy != "noeviction" {
            problems.push(format!(
                "maxmemory-policy is {:?}: Redis may evict accepted reports and queue entries \
                 (set `maxmemory-policy noeviction`)",
                self.maxmemory_policy
            ));
        }
        problems
    }

    /// What a 202 survives when each promise-bearing write waits for `replica_acks` replicas.
    pub fn durability(&self, replica_acks: u32) -> Durability {
        let disk = if !self.aof_enabled {
            "no AOF: a Redis restart loses acknowledged reports".to_owned()
        } else if self.supports_waitaof() {
            format!(
                "AOF (appendfsync {}), WAITAOF confirms the fsync before each 202 and each send",
                self.appendfsync_or_unknown()
            )
        } else {
            format!(
                "AOF (appendfsync {}), Redis {} has no WAITAOF",
                self.appendfsync_or_unknown(),
                self.version
            )
        };
        let survives_redis_crash =
            self.aof_enabled && (self.appendfsync == "always" || self.supports_waitaof());
        let replicas = match (self.replicas, replica_acks) {
            (0, 0) => "no replicas".to_owned(),
            (have, 0) => format!(
                "{have} replica(s), none waited for: a failover can lose acknowledged reports \
                 (set store.replica_acks)"
            ),
            (have, want) if have < want => format!(
                "WAIT for {want} replica(s) but {have} connected: every accept answers \
                 outcome-unknown and nothing is sent until they are back"
            ),
            (have, want) => format!(
                "WAIT for {want} of {have} replica(s) before each 202 and each send: a \
                 failover onto a replica that acknowledged keeps them"
            ),
        };
        // With replicas, a failover is what happens on a master's crash: only writes the
        // replicas acknowledged survive it, whatever the master's own AOF holds.
        let survives_failover = replica_acks >= 1 && self.replicas >= replica_acks;
        let mut survives = vec!["process crash".to_owned()];
        if survives_redis_crash {
            survives.push("Redis crash".to_owned());
        }
        if survives_failover {
            survives.push("failover".to_owned());
        }
        Durability {
            backend: "redis".into(),
            level: format!("{disk}; {replicas}"),
            may_lose_acknowledged_writes: !survives_redis_crash
                || (self.replicas > 0 && !survives_failover),
            survives,
            replica_acks,
            replicas: Some(self.replicas),
        }
    }

    fn appendfsync_or_unknown(&self) -> &str {
        if self.appendfsync.is_empty() {
            "unknown"
        } else {
            &self.appendfsync
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(replicas: u32, version: &str) -> Persistence {
        Persistence {
            version: version.into(),
            aof_enabled: true,
            appendfsync: "everysec".into(),
            maxmemory_policy: "noeviction".into(),
            replicas,
        }
    }

    #[test]
    fn a_failover_is_survived_only_when_the_replicas_acknowledge() {
        let unwaited = with(1, "7.2.4").durability(0);
        assert!(unwaited.may_lose_acknowledged_writes);
        assert_eq!(unwaited.survives, ["process crash", "Redis crash"]);
        assert!(
            unwaited.level.contains("set store.replica_acks"),
            "{}",
            unwaited.level
        );

        let waited = with(1, "7.2.4").durability(1);
        assert!(!waited.may_lose_acknowledged_writes);
        assert_eq!(
            waited.survives,
            ["process crash", "Redis crash", "failover"]
        );

        let missing = with(0, "7.2.4").durability(1);
        assert!(
            missing.level.contains("outcome-unknown"),
            "{}",
            missing.level
        );
        assert!(!missing.survives.contains(&"failover".to_owned()));
    }

    #[test]
    fn redis_7_0_with_everysec_survives_a_failover_but_not_a_crash_of_every_node() {
        let old = with(1, "7.0.15").durability(1);
        assert_eq!(old.survives, ["process crash", "failover"]);
        assert!(old.may_lose_acknowledged_writes);
        assert!(old.level.contains("has no WAITAOF"), "{}", old.level);
    }

    #[test]
    fn replicas_are_read_from_info() {
        let info = "redis_version:7.0.15\r\naof_enabled:1\r\nrole:master\r\nconnected_slaves:2\r\n";
        assert_eq!(Persistence::from_info(info, Some("always")).replicas, 2);
    }
}
