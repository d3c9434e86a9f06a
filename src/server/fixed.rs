//! Settings fixed at start. A reload that changes one of them is refused
//! with the reason, rather than applied without it: the file and `/status`
//! would otherwise show a value that does not act.

use crate::config::Config;

/// `Err(reason)` when `new` changes a setting that only a restart can change.
/// `access_log.path` is not one: a reload reopens the log at the new path.
pub fn check(running: &Config, new: &Config) -> Result<(), String> {
    let fixed = [
        (
            "server.workers",
            running.server.workers.to_string(),
            new.server.workers.to_string(),
        ),
        ("server.pid_file", pid_file(running), pid_file(new)),
        (
            "admin.enabled",
            running.admin.enabled.to_string(),
            new.admin.enabled.to_string(),
        ),
        (
            "admin.address",
            running.admin.address.get_ref().to_string(),
            new.admin.address.get_ref().to_string(),
        ),
        (
            "access_log.enabled",
            running.access_log.enabled.to_string(),
            new.access_log.enabled.to_string(),
        ),
        ("tracing", tracing(running), tracing(new)),
    ];
    for (key, was, now) in fixed {
        if was != now {
            return Err(format!(
                "{key}: a reload cannot change it (running {was}, the file says {now}); \
                 restart Levee to apply it, or put the running value back"
            ));
        }
    }
    Ok(())
}

/// The exporter is started with the process: its endpoint, batching and
/// sampling are read once.
fn tracing(c: &Config) -> String {
    let t = &c.tracing;
    format!(
        "otlp_endpoint {}, batch_size {}, interval {:?}, queue_size {}, sample_ratio {}, timeout {:?}, service_name {:?}",
        t.otlp_endpoint
            .as_ref()
            .map_or("unset", |e| e.get_ref().as_str()),
        t.batch_size.get_ref(),
        t.interval.get(),
        t.queue_size.get_ref(),
        t.sample_ratio.get_ref(),
        t.timeout.get(),
        t.service_name
    )
}

fn pid_file(c: &Config) -> String {
    c.server
        .pid_file
        .as_ref()
        .map_or_else(|| "unset".into(), |p| format!("{:?}", p.get_ref()))
}
