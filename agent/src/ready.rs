//! Readiness for systemd (`Type=notify` in the packaged unit): `READY=1` goes out only once
//! every socket the agent serves answers a request: the control socket, and the Docker plugin
//! socket when `--docker-plugin` is on. systemd holds back units ordered after the agent
//! (`docker.service`) until then, so Docker never asks for a plugin that is not there yet.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) nothing is probed or sent.

use std::{path::PathBuf, time::Duration};

use sd_notify::NotifyState;

use crate::{api::client::Client, config::Settings};

/// A socket that must answer before the agent counts as ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The control API socket: `GET /v1/status`.
    Control(PathBuf),
    /// The Docker plugin socket: `POST /Plugin.Activate`, Docker's own first request.
    Plugin(PathBuf),
}

impl Probe {
    /// The socket probed.
    pub fn path(&self) -> &PathBuf {
        match self {
            Probe::Control(p) | Probe::Plugin(p) => p,
        }
    }

    /// One request; `Err` says why the socket does not answer (yet).
    pub async fn answer(&self) -> Result<(), String> {
        let client = Client::new(self.path());
        let call = async {
            match self {
                Probe::Control(_) => client
                    .get::<serde_json::Value>("/v1/status")
                    .await
                    .map(drop),
                Probe::Plugin(_) => client
                    .post::<_, serde_json::Value>("/Plugin.Activate", &serde_json::json!({}))
                    .await
                    .map(drop),
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "{} does not answer within 2 s",
                self.path().display()
            )),
        }
    }
}

/// The sockets this agent serves and must answer on before it is ready.
pub fn probes(settings: &Settings) -> Vec<Probe> {
    let mut v = vec![Probe::Control(settings.socket_path())];
    if settings.docker_plugin {
        v.push(Probe::Plugin(crate::config::PLUGIN_SOCKET.into()));
    }
    v
}

/// Polls every probe until all answer at once (every 50 ms; a warning every 10 s says which
/// one is missing and why).
pub async fn wait_answering(probes: &[Probe]) {
    let mut since_warn = std::time::Instant::now();
    loop {
        let mut missing = None;
        for p in probes {
            if let Err(e) = p.answer().await {
                missing = Some(e);
                break;
            }
        }
        let Some(why) = missing else { return };
        if since_warn.elapsed() >= Duration::from_secs(10) {
            tracing::warn!(reason = %why, "not ready yet");
            since_warn = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `READY=1` to systemd once every probe answers. Run it as a task of its own, after
/// the listeners are bound; a no-op outside systemd.
pub async fn notify_when_answering(probes: Vec<Probe>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    wait_answering(&probes).await;
    let status = match probes.len() {
        1 => "serving the control socket".to_string(),
        _ => "serving the control and Docker plugin sockets".to_string(),
    };
    match sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        Ok(()) => tracing::info!("ready: told systemd ({status})"),
        Err(e) => tracing::warn!(error = %e, "telling systemd we are ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(extra: &[&str]) -> Settings {
        let mut args = vec![
            "overlay-agent",
            "--host-id",
            "h1",
            "--advertise-addr",
            "198.18.0.11",
            "--run-dir",
            "/run/ovl-test",
        ];
        args.extend_from_slice(extra);
        Settings::resolve(crate::config::Cli::try_parse_from(args).unwrap()).unwrap()
    }

    #[test]
    fn the_plugin_socket_counts_only_when_served() {
        assert_eq!(
            probes(&settings(&[])),
            vec![Probe::Control("/run/ovl-test/overlay.sock".into())]
        );
        assert_eq!(
            probes(&settings(&["--docker-plugin"])),
            vec![
                Probe::Control("/run/ovl-test/overlay.sock".into()),
                Probe::Plugin("/run/docker/plugins/ovl.sock".into()),
            ]
        );
    }

    /// Serves `GET /v1/status` and `POST /Plugin.Activate` on a Unix socket.
    async fn serve(path: &std::path::Path) -> tokio::task::JoinHandle<()> {
        let app = axum::Router::new()
            .route(
                "/v1/status",
                axum::routing::get(|| async { axum::Json(serde_json::json!({})) }),
            )
            .route(
                "/Plugin.Activate",
                axum::routing::post(|| async {
                    axum::Json(serde_json::json!({"Implements": ["NetworkDriver"]}))
                }),
            );
        let l = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() })
    }

    #[tokio::test]
    async fn waits_until_every_socket_answers() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = dir.path().join("overlay.sock");
        let plugin = dir.path().join("ovl.sock");
        let probes = vec![Probe::Control(ctl.clone()), Probe::Plugin(plugin.clone())];
        assert!(probes[0].answer().await.is_err(), "nothing serves yet");

        let _ctl = serve(&ctl).await;
        assert_eq!(probes[0].answer().await, Ok(()));
        // A socket file nobody listens on (a stale one) does not count.
        drop(std::os::unix::net::UnixListener::bind(&plugin).unwrap());
        assert!(plugin.exists());
        let waiting = tokio::spawn({
            let probes = probes.clone();
            async move { wait_answering(&probes).await }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !waiting.is_finished(),
            "ready while the plugin socket is dead"
        );

        std::fs::remove_file(&plugin).unwrap();
        let _plugin = serve(&plugin).await;
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ready once both answer")
            .unwrap();
    }
}
