//! What a 202 and a send wait for, on the server the tests run on. `scripts/test` runs the
//! store suites twice: on Debian's Redis 7.0 (no `WAITAOF`) and on Valkey 8
//! (`GATEWAY_TEST_REDIS_SERVER`, Redis 7.2-compatible, with `WAITAOF`). Each run checks the
//! branch its server takes, so the `WAITAOF` path runs against a server that really has it.

use crate::helpers::*;

/// The server's `redis_version` (Valkey reports the Redis version it is compatible with).
async fn server_has_waitaof(c: &mut redis::aio::MultiplexedConnection) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(c)
        .await
        .unwrap();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .expect("INFO server names redis_version");
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap()) >= (7, 2)
}

/// How many times the server ran `WAITAOF` since the last `CONFIG RESETSTAT`.
async fn waitaof_calls(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_waitaof:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn an_accept_and_a_send_wait_for_the_aof_fsync_where_the_server_has_waitaof() {
    let rig = spawn_delivery_rig_on_persistent_redis().await;
    let mut c = rig.app.redis().connection().await;
    let has_waitaof = server_has_waitaof(&mut c).await;

    // Readiness reads the server's persistence, and with it whether WAITAOF can be used.
    let ready = rig.app.get("/health/ready", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let level = ready.body["durability"]["level"]
        .as_str()
        .unwrap()
        .to_owned();
    // AOF with fsync on every write: nothing acknowledged is lost, with or without WAITAOF.
    assert_eq!(
        ready.body["durability"]["may_lose_acknowledged_writes"],
        false
    );
    assert_eq!(level.contains("WAITAOF confirms"), has_waitaof, "{level}");

    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    let id = rig.submit(NAIROBI, &three_column_report(2, "10.00")).await;
    let after_accept = waitaof_calls(&mut c).await;
    let worker = rig.worker();
    assert_eq!(rig.drain(&worker).await, 1);
    let after_send = waitaof_calls(&mut c).await;
    assert_eq!(batch_states(&rig.report(&id).await), ["delivered"]);

    if has_waitaof {
        assert!(after_accept >= 1, "the 202 came before WAITAOF");
        assert!(
            after_send > after_accept,
            "BEGIN (sending) was not confirmed on disk before the send"
        );
    } else {
        assert_eq!((after_accept, after_send), (0, 0), "{level}");
    }
}
