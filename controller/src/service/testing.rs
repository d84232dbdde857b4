//! A service over a real store in a temporary directory, with accounts of each
//! role, for the permission-edge tests of every operation.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use super::{Caller, Service};
use crate::app::App;
use crate::config::{DataDir, HostsConfig};
use crate::pki::{self, InitOptions};
use crate::users::Role;

pub struct World {
    pub service: Arc<Service>,
    pub admin: Caller,
    pub alice: Caller,
    pub bob: Caller,
    pub _dir: tempfile::TempDir,
}

impl World {
    /// A controller's service with an admin `root`, users `alice` and `bob`, and
    /// the account `carol`, disabled.
    pub async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        pki::init(
            &data,
            &InitOptions {
                server_names: vec!["localhost".into()],
                api_listen: ([127, 0, 0, 1], 0).into(),
                web: pki::WebTls::Http,
                link_listen: ([127, 0, 0, 1], 0).into(),
                hosts: HostsConfig::default(),
                agent_cert_ttl: Duration::from_secs(3600),
                force: false,
                store: Default::default(),
            },
        )
        .unwrap();
        let app = Arc::new(App::open(data).unwrap());
        let service = Service::new(app);
        let boot = service.authenticate(&bootstrap_token(dir.path())).unwrap();
        for (name, role) in [
            ("root", Role::Admin),
            ("alice", Role::User),
            ("bob", Role::User),
            ("carol", Role::User),
        ] {
            service
                .create_user(&boot, name, "password-1", role)
                .await
                .unwrap();
        }
        service
            .set_user_disabled(&boot, "carol", true)
            .await
            .unwrap();
        let login = |name: &'static str| {
            let service = service.clone();
            async move {
                let t = service
                    .login(name, "password-1", "test", None)
                    .await
                    .unwrap();
                service.authenticate(&t.token).unwrap()
            }
        };
        World {
            admin: login("root").await,
            alice: login("alice").await,
            bob: login("bob").await,
            service,
            _dir: dir,
        }
    }
}

/// The admin token `init` wrote.
fn bootstrap_token(root: &std::path::Path) -> String {
    std::fs::read_to_string(DataDir::new(root).admin_token())
        .unwrap()
        .trim()
        .to_string()
}
