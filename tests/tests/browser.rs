//! The web UI in a real browser: headless Chromium driven over WebDriver
//! (chromedriver) against a controller, an agent and the test app in Docker.
//!
//! Proves: an anonymous visitor is sent to the login page; a user logs in, sees the
//! catalogue, launches a blueprint with one click, watches the instance page go to
//! `running` on its own (the page's script polls the API), opens the app through the
//! proxy, stops it and sees `stopped`, lists their instances and logs out. Logged out,
//! a protected page (the instance page, an admin page) leads to the login page, and
//! logging in there returns to that page; a `next` pointing at another site is not
//! followed. An admin sees the Hosts, Blueprints, one blueprint, Users and All
//! instances pages. The login
//! and catalogue pages pass basic accessibility checks (every visible form field has a
//! label, one `h1`, a `main` landmark). Every page is saved as a PNG screenshot under
//! `artifacts/browser/` for people to look at.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::Method;
use serde_json::{json, Value};

use cairn_tests::cluster::{controller_with_agent, free_tcp_port, wait_for, Agent, Controller};
use cairn_tests::docker::InstanceContainers;
use cairn_tests::oidc::{OidcProvider, OidcUser};
use cairn_tests::require::{find_program, require, Need, CHROMEDRIVER, CHROMIUM};
use cairn_tests::testapp::{testapp_image, PORT};

/// A controller with one agent and the test app blueprint `app`.
async fn stack(tmp: &Path) -> (Controller, Agent) {
    let image = testapp_image();
    let (ctl, agent, _host) = controller_with_agent(tmp, "docker-host").await;
    let bp = json!({
        "name": "app", "image": image, "pull": "never", "app": "http", "app_port": PORT,
        "memory_mib": 256, "cpus": 1.0,
        "description": "A small web app that says hello: the quickest way to try Cairn.",
        "volume": {"path": "/data", "owner": "0:0"},
    });
    ctl.blueprint(bp).await;
    (ctl, agent)
}

/// A chromedriver process in its own process group; the whole group (chromedriver
/// and the browsers it started) is killed when this is dropped.
struct Chromedriver {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver on a free port (the test has checked `Need::Chromium`).
    async fn start(tmp: &Path) -> Self {
        let driver = find_program(CHROMEDRIVER).expect("chromedriver, checked by require");
        Self::spawn(&driver, tmp).await
    }

    async fn spawn(driver: &Path, tmp: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let port = free_tcp_port();
        let log = tmp.join("chromedriver.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", driver.display()));
        let me = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        let status = format!("{}/status", me.url);
        wait_for("chromedriver /status", Duration::from_secs(20), || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                let Ok(r) = http.get(&status).send().await else {
                    return false;
                };
                r.json::<Value>()
                    .await
                    .ok()
                    .is_some_and(|v| v["value"]["ready"] == true)
            }
        })
        .await;
        me
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- chromedriver log -----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        // The process group: chromedriver and every browser process under it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session with numbered screenshots.
struct Browser {
    client: Client,
    base: String,
    shots: PathBuf,
    n: u32,
}

impl Browser {
    async fn connect(driver: &Chromedriver, base: &str, profile: &Path) -> Self {
        let caps = json!({
            "goog:chromeOptions": {
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    // In the test's temporary directory, so nothing is left in /tmp.
                    format!("--user-data-dir={}", profile.display()),
                ],
                "binary": find_program(CHROMIUM).expect("chromium, checked by require"),
            }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a WebDriver session in headless Chromium");
        let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("artifacts")
            .join("browser");
        std::fs::create_dir_all(&shots).unwrap();
        let shots = shots.canonicalize().unwrap();
        // Screenshots of an earlier run would mix with this one's.
        for e in std::fs::read_dir(&shots).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "png") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Browser {
            client,
            base: base.to_string(),
            shots,
            n: 0,
        }
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    /// The current URL's path.
    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    /// Saves a screenshot as `NN-name.png`.
    async fn shot(&mut self, name: &str) -> PathBuf {
        self.n += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let file = self.shots.join(format!("{:02}-{name}.png", self.n));
        std::fs::write(&file, png).unwrap();
        file
    }

    /// Saves a screenshot and panics with `msg`.
    async fn fail(&mut self, msg: String) -> ! {
        let shot = self.shot("FAILED").await;
        let url = self.client.current_url().await.map(|u| u.to_string());
        panic!("{msg} (at {url:?}; screenshot {})", shot.display());
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => {
                let src = self.client.source().await.unwrap_or_default();
                panic!("no element {css}: {e}\n----- page -----\n{src}");
            }
        }
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Waits until the URL's path satisfies `ok`.
    async fn wait_path(&mut self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            let path = self.path().await;
            if ok(&path) {
                return;
            }
            if start.elapsed() > timeout {
                self.fail(format!("not at {what} after {timeout:?}: at {path}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the element `css` (found afresh each time, so navigation in
    /// between is fine) has the text `want`.
    async fn wait_text(&mut self, css: &str, want: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                if let Ok(t) = el.text().await {
                    if t.trim() == want {
                        return start.elapsed();
                    }
                    last = t;
                }
            }
            if start.elapsed() > timeout {
                self.fail(format!(
                    "{css} did not read {want:?} within {timeout:?} (last {last:?})"
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Replaces the text of the field `css` with `value`.
    async fn fill(&self, css: &str, value: &str) {
        let el = self.find(css).await;
        el.clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        el.send_keys(value)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Chooses the option `value` of the select `css`.
    async fn choose(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("choose {value} in {css}: {e}"));
    }

    /// Logs in through the form; lands wherever `next` says.
    async fn log_in(&mut self, user: &str, password: &str) {
        assert_eq!(self.path().await, "/login");
        self.find("#user").await.send_keys(user).await.unwrap();
        self.find("#password")
            .await
            .send_keys(password)
            .await
            .unwrap();
        self.click("form.fields button[type=submit]").await;
        self.wait_path("a page past the login", Duration::from_secs(10), |p| {
            p != "/login"
        })
        .await;
    }

    /// Logs out from the header's button; lands on the login page.
    async fn log_out(&mut self) {
        self.click("form.logout button[type=submit]").await;
        self.wait_path("the login page", Duration::from_secs(10), |p| p == "/login")
            .await;
    }

    /// The page's single `h1` text.
    async fn h1(&self) -> String {
        self.text("main h1").await
    }

    /// Basic accessibility: every visible form field has a `label[for]`, exactly one
    /// `h1`, and a `main` landmark.
    async fn check_accessibility(&self, page: &str) {
        let report = self
            .client
            .execute(
                r#"
                const unlabelled = [];
                for (const el of document.querySelectorAll("input, select, textarea")) {
                  if ((el.getAttribute("type") || "").toLowerCase() === "hidden") continue;
                  if (!el.id || !document.querySelector('label[for="' + CSS.escape(el.id) + '"]')) {
                    unlabelled.push(el.outerHTML);
                  }
                }
                return {
                  unlabelled,
                  fields: document.querySelectorAll("input:not([type=hidden]), select, textarea").length,
                  h1: document.querySelectorAll("h1").length,
                  main: document.querySelectorAll("main").length,
                  lang: document.documentElement.lang,
                };
                "#,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            report["unlabelled"],
            json!([]),
            "{page}: form fields without a label: {report:#}"
        );
        assert_eq!(report["h1"], 1, "{page}: not exactly one h1: {report:#}");
        assert_eq!(report["main"], 1, "{page}: no single main: {report:#}");
        assert_eq!(report["lang"], "en", "{page}: no lang: {report:#}");
        println!("{page}: accessibility basics ok ({report})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_launches_opens_and_stops_an_app_and_an_admin_sees_the_admin_pages() {
    if !require(&[Need::Docker, Need::Chromium]) {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let driver = Chromedriver::start(tmp.path()).await;
    let (ctl, _agent) = stack(tmp.path()).await;
    // Removes whatever the browser launched, however the test ends.
    let mut cleanup = InstanceContainers(vec![]);
    for (name, role) in [("alice", "user"), ("root1", "admin")] {
        let (status, body) = ctl
            .send(
                Method::POST,
                "/api/v1/users",
                Some(json!({"name": name, "password": format!("{name}-password-1"), "role": role})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let setup = started.elapsed();
    let mut b = Browser::connect(&driver, &ctl.api, &tmp.path().join("chromium-profile")).await;

    // Anonymous: to the login page, which remembers where we were going.
    b.goto("/").await;
    assert_eq!(b.path().await, "/login");
    assert_eq!(b.h1().await, "Log in");
    b.check_accessibility("login").await;
    b.shot("login").await;
    b.log_in("alice", "alice-password-1").await;

    // The catalogue with the blueprint's card.
    assert_eq!(b.path().await, "/");
    assert_eq!(b.h1().await, "Catalogue");
    let card = b.text("article.card").await;
    assert!(card.contains("app"), "{card}");
    assert!(card.contains("says hello"), "{card}");
    assert!(card.contains("256 MiB memory"), "{card}");
    b.check_accessibility("catalogue").await;
    b.shot("catalogue").await;

    // Launch: straight to the instance page, which follows the launch by itself.
    b.click(r#"button[aria-label="Launch app"]"#).await;
    b.wait_path("an instance page", Duration::from_secs(10), |p| {
        p.starts_with("/instances/")
    })
    .await;
    let path = b.path().await;
    let id = path.trim_start_matches("/instances/").to_string();
    cleanup.0.push(id.clone());
    b.shot("instance-launching").await;
    let took = b
        .wait_text("#state", "running", Duration::from_secs(60))
        .await;
    println!("instance {id} running {took:?} after the launch page loaded");
    assert_eq!(b.text("#progress-text").await, "Ready to open");
    let open = b.find("#open").await;
    assert_eq!(
        open.attr("aria-disabled").await.unwrap().as_deref(),
        Some("false")
    );
    b.shot("instance-running").await;

    // Open: the app through the proxy, with the session cookie.
    b.click("#open").await;
    b.wait_path("the proxied app", Duration::from_secs(10), |p| {
        p == format!("/i/{id}/")
    })
    .await;
    let hello = b
        .client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("h1#hello"))
        .await;
    let hello = match hello {
        Ok(h) => h,
        Err(e) => b.fail(format!("no h1#hello in the proxied app: {e}")).await,
    };
    assert_eq!(hello.text().await.unwrap(), "Hello from the Cairn test app");
    b.shot("app-through-proxy").await;

    // Back to the instance page and Stop.
    b.client.back().await.unwrap();
    b.wait_path("the instance page", Duration::from_secs(10), |p| p == path)
        .await;
    b.wait_text("#state", "running", Duration::from_secs(10))
        .await;
    b.click("form#stop button[type=submit]").await;
    b.wait_text("#state", "stopped", Duration::from_secs(30))
        .await;
    assert_eq!(b.path().await, path);
    let open = b.find("#open").await;
    assert_eq!(
        open.attr("aria-disabled").await.unwrap().as_deref(),
        Some("true"),
        "Open still enabled on a stopped instance"
    );
    // The Stop form is hidden by the script, or absent if the page was rendered late.
    for stop in b.client.find_all(Locator::Css("form#stop")).await.unwrap() {
        assert!(
            !stop.is_displayed().await.unwrap(),
            "Stop still shown on a stopped instance"
        );
    }
    b.shot("instance-stopped").await;

    // My instances lists it, stopped.
    b.goto("/instances").await;
    assert_eq!(b.h1().await, "My instances");
    let table = b.text("table").await;
    assert!(table.contains(&id), "{table}");
    assert!(table.contains("stopped"), "{table}");
    b.shot("my-instances").await;

    // Its files were kept: the volume and its one snapshot, the head, with a
    // download link.
    b.goto("/volumes").await;
    assert_eq!(b.h1().await, "Volumes");
    let table = b.text("table").await;
    assert!(table.contains("app"), "{table}");
    b.click("table a[href='/volumes/app']").await;
    b.wait_path("the volume page", Duration::from_secs(10), |p| {
        p == "/volumes/app"
    })
    .await;
    assert_eq!(b.h1().await, "Volume app");
    let table = b.text("table").await;
    assert!(
        table.contains("head") && table.contains("Download"),
        "{table}"
    );
    b.check_accessibility("/volumes/app").await;
    b.shot("volume").await;

    // Log out from the header.
    b.log_out().await;
    b.shot("logged-out").await;
    // The session is gone: a protected page sends to the login page, and logging in
    // there returns to that page.
    b.goto(&path).await;
    assert_eq!(b.path().await, "/login");
    b.log_in("alice", "alice-password-1").await;
    assert_eq!(
        b.path().await,
        path,
        "login did not return to the page asked for"
    );
    assert_eq!(b.h1().await, "app", "{path}");
    b.log_out().await;

    // A `next` pointing at another site is not followed: the login lands on the
    // catalogue of this one.
    for next in [
        "//evil.example/",
        "https://evil.example/x",
        "/\\evil.example/",
    ] {
        let mut login = reqwest::Url::parse(&format!("{}/login", b.base)).unwrap();
        login.query_pairs_mut().append_pair("next", next);
        b.client.goto(login.as_str()).await.unwrap();
        b.log_in("alice", "alice-password-1").await;
        let url = b.client.current_url().await.unwrap();
        assert_eq!(
            url.as_str(),
            format!("{}/", b.base),
            "login followed next={next:?}"
        );
        b.log_out().await;
    }

    // An admin asks for an admin page logged out and lands on it after logging in;
    // every admin page has its heading.
    b.goto("/admin/hosts").await;
    assert_eq!(b.path().await, "/login");
    b.log_in("root1", "root1-password-1").await;
    assert_eq!(
        b.path().await,
        "/admin/hosts",
        "login did not return to the page asked for"
    );
    for (page, title, check) in [
        ("/admin/hosts", "Hosts", "docker-host"),
        ("/admin/blueprints", "Blueprints", "cairn-test/testapp"),
        ("/admin/blueprints/app", "Blueprint app", "Revision history"),
        ("/admin/users", "Users", "alice"),
        ("/admin/instances", "All instances", id.as_str()),
    ] {
        if b.path().await != page {
            b.goto(page).await;
        }
        assert_eq!(b.path().await, page);
        assert_eq!(b.h1().await, title, "{page}");
        let main = b.text("main").await;
        assert!(main.contains(check), "{page} lacks {check:?}: {main}");
        let name = page.trim_start_matches('/').replace('/', "-");
        b.shot(&name).await;
    }

    b.client.close().await.unwrap();
    println!(
        "browser test: {:?} in all ({setup:?} setup); screenshots in {}",
        started.elapsed(),
        b.shots.display()
    );
}

/// A teacher's day, in the browser: a user starts a group, makes a blueprint for
/// it and a join code; a student, who cannot see the blueprint before joining,
/// joins with the code and launches it; the teacher sees the student's instance
/// on the group's page and stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_starts_a_course_a_student_joins_and_launches_and_the_teacher_stops_it() {
    if !require(&[Need::Docker, Need::Chromium]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let driver = Chromedriver::start(tmp.path()).await;
    let image = testapp_image();
    let mut ctl = Controller::init(tmp.path(), &Default::default());
    // New groups' managers may use the test images.
    ctl.set_config("images", r#"["cairn-test/*"]"#);
    ctl.start().await;
    let _agent = cairn_tests::cluster::start_agent(&ctl, tmp.path(), "docker-host").await;
    let mut cleanup = InstanceContainers(vec![]);
    for name in ["teacher", "student"] {
        let (status, body) = ctl
            .send(
                Method::POST,
                "/api/v1/users",
                Some(
                    json!({"name": name, "password": format!("{name}-password-1"), "role": "user"}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut b = Browser::connect(&driver, &ctl.api, &tmp.path().join("chromium-profile")).await;

    // The teacher starts a group.
    b.goto("/groups").await;
    b.log_in("teacher", "teacher-password-1").await;
    assert_eq!(b.path().await, "/groups");
    b.check_accessibility("/groups").await;
    b.fill("#name", "bio101").await;
    b.fill("#title", "Biology 101").await;
    b.click("form[action='/groups'] button[type=submit]").await;
    b.wait_path("the group's page", Duration::from_secs(10), |p| {
        p == "/groups/bio101"
    })
    .await;
    b.check_accessibility("/groups/bio101").await;
    b.shot("teacher-group").await;

    // A join code (the form posts back to this page).
    b.click("#new-code").await;
    let code = match b
        .client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#join-code"))
        .await
    {
        Ok(e) => e.text().await.unwrap(),
        Err(e) => {
            b.fail(format!("no join code after New join code: {e}"))
                .await
        }
    };
    assert!(
        code.len() >= 8,
        "a join code too short to resist guessing: {code:?}"
    );

    // A blueprint for the group, from the group's page (the group is filled in).
    b.click("#new-blueprint").await;
    b.wait_path("the new blueprint form", Duration::from_secs(10), |p| {
        p == "/admin/blueprints/new"
    })
    .await;
    assert_eq!(
        b.find("#group")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("bio101")
    );
    b.fill("#name", "bio-notebook").await;
    b.fill("#description", "The course's notebook").await;
    b.fill("#image", &image).await;
    b.choose("#app", "http").await;
    b.fill("#app_port", &PORT.to_string()).await;
    b.fill("#memory_mib", "256").await;
    b.fill("#cpus", "1").await;
    b.choose("#pull", "never").await;
    b.click("form.fields button[type=submit]").await;
    b.wait_path("the blueprint's page", Duration::from_secs(20), |p| {
        p == "/admin/blueprints/bio-notebook"
    })
    .await;
    b.shot("teacher-blueprint").await;
    b.log_out().await;

    // The student sees no course blueprint before joining, joins with the code,
    // and then does.
    b.log_in("student", "student-password-1").await;
    assert_eq!(b.path().await, "/");
    let main = b.text("main").await;
    assert!(
        !main.contains("bio-notebook"),
        "shown before joining: {main}"
    );
    b.goto("/groups").await;
    b.fill("#code", &code).await;
    b.click("form[action='/groups/join'] button[type=submit]")
        .await;
    b.wait_path("the group's page", Duration::from_secs(10), |p| {
        p == "/groups/bio101"
    })
    .await;
    b.shot("student-joined").await;
    // The group's page lists its blueprints to its members too.
    let listed = b.text("#group-blueprints").await;
    assert!(listed.contains("bio-notebook"), "{listed}");
    b.goto("/").await;
    b.click(r#"button[aria-label="Launch bio-notebook"]"#).await;
    b.wait_path("an instance page", Duration::from_secs(10), |p| {
        p.starts_with("/instances/")
    })
    .await;
    let id = b.path().await.trim_start_matches("/instances/").to_string();
    cleanup.0.push(id.clone());
    b.wait_text("#state", "running", Duration::from_secs(60))
        .await;
    b.shot("student-running").await;
    b.log_out().await;

    // The teacher sees the student's instance on the group's page and stops it.
    b.log_in("teacher", "teacher-password-1").await;
    b.goto("/groups/bio101").await;
    let row = format!("//tr[.//a[@href='/instances/{id}']]");
    let tr = match b.client.find(Locator::XPath(&row)).await {
        Ok(tr) => tr,
        Err(e) => b.fail(format!("{id} not on the group's page: {e}")).await,
    };
    let text = tr.text().await.unwrap();
    assert!(
        text.contains("student") && text.contains("bio-notebook") && text.contains("running"),
        "{text}"
    );
    tr.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let stopped = format!("{row}//*[contains(., 'stopped')]");
    let start = Instant::now();
    loop {
        b.goto("/groups/bio101").await;
        if b.client.find(Locator::XPath(&stopped)).await.is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            b.fail(format!("{id} not stopped on the group's page"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    b.shot("teacher-stopped").await;
    // Stopped by the teacher, for the student to read.
    let (status, v) = ctl
        .send(Method::GET, &format!("/api/v1/instances/{id}"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "stopped", "{v}");
    assert_eq!(v["state_reason"], "stopped by teacher", "{v}");
    b.client.close().await.unwrap();
}

/// Single sign-on against a real OpenID Connect provider (django-oidc-provider):
/// the login page's button goes to the provider, its login form comes back
/// logged in where the user was going, with an account made for the identity
/// and the provider's group mapped to a Cairn group; a local account of the same
/// name as a provider's user is never taken over; a forged or replayed callback
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_with_openid_connect_makes_the_account_and_maps_groups() {
    if !require(&[Need::Chromium, Need::Oidc]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let driver = Chromedriver::start(tmp.path()).await;
    let mut ctl = Controller::init(tmp.path(), &Default::default());
    let redirect = format!("{}/login/oidc/callback", ctl.api);
    let provider = OidcProvider::start(
        &[
            OidcUser::new(
                "Erin",
                "erin-password-1",
                "erin@uni.example",
                &["bio-students", "library"],
            ),
            OidcUser::new("alice", "alice-idp-password", "alice@uni.example", &[]),
        ],
        std::slice::from_ref(&redirect),
    )
    .await
    .unwrap_or_else(|e| panic!("starting the OIDC provider: {e:#}"));
    ctl.append_config(&format!(
        "[auth.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
         redirect_url = \"{redirect}\"\nlabel = \"University ID\"\n\
         scopes = [\"email\", \"profile\", \"groups\"]\n\
         [auth.oidc.groups]\n\"bio-students\" = \"bio101\"\n",
        provider.issuer, provider.client_id, provider.client_secret
    ));
    ctl.start().await;
    let teacher = ctl.user("teacher", "user").await;
    let (status, body) = ctl
        .request(
            Some(&teacher),
            Method::POST,
            "/api/v1/groups",
            Some(json!({"name": "bio101", "title": "Biology 101"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A local account that a provider's user of the same name must not get.
    let (status, body) = ctl
        .send(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "alice", "password": "alice-local-password", "role": "admin"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut b = Browser::connect(&driver, &ctl.api, &tmp.path().join("chromium-profile")).await;

    // A protected page, the login page's button, the provider's form.
    b.goto("/groups").await;
    assert_eq!(b.path().await, "/login");
    assert_eq!(b.text("#sso-login").await, "Log in with University ID");
    b.check_accessibility("login with single sign-on").await;
    b.shot("sso-login").await;
    b.click("#sso-login").await;
    sso_provider_login(&mut b, &provider, "Erin", "erin-password-1").await;
    b.wait_path("the page asked for", Duration::from_secs(20), |p| {
        p == "/groups"
    })
    .await;
    assert_eq!(b.h1().await, "Groups");
    let header = b.text("header").await;
    assert!(header.contains("erin"), "{header}");
    let main = b.text("main").await;
    assert!(
        main.contains("Biology 101"),
        "the mapped group is not among erin's: {main}"
    );
    b.shot("sso-logged-in").await;

    // The account the identity made (a user, no password), its group, the audit.
    let (_, users) = ctl.send(Method::GET, "/api/v1/users", None).await;
    let erin = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "erin")
        .unwrap_or_else(|| panic!("no account erin: {users}"));
    assert_eq!(erin["role"], "user", "{erin}");
    let (_, g) = ctl.send(Method::GET, "/api/v1/groups/bio101", None).await;
    assert!(
        g["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["user"] == "erin" && m["role"] == "member"),
        "{g}"
    );
    let (_, audit) = ctl.send(Method::GET, "/api/v1/audit?limit=50", None).await;
    let logins: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "login" && e["actor"] == "erin")
        .collect();
    assert_eq!(logins.len(), 1, "{audit}");
    assert!(
        logins[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("oidc {}#", provider.issuer)),
        "{audit}"
    );
    // No password logs in as it.
    let (status, _) = ctl
        .send(
            Method::POST,
            "/api/v1/login",
            Some(json!({"user": "erin", "password": ""})),
        )
        .await;
    assert_ne!(status, 200);
    b.log_out().await;

    // The provider's alice is not the local admin alice. (The provider still
    // knows erin's browser: its session cookie goes, which cookies on
    // 127.0.0.1 share whatever the port.)
    b.client.delete_all_cookies().await.unwrap();
    b.click("#sso-login").await;
    sso_provider_login(&mut b, &provider, "alice", "alice-idp-password").await;
    b.wait_path("the login page", Duration::from_secs(20), |p| {
        p.starts_with("/login")
    })
    .await;
    let main = b.text("main").await;
    assert!(
        main.contains("an account named \"alice\" exists here already"),
        "{main}"
    );
    assert!(
        b.client.find(Locator::Css("form.logout")).await.is_err(),
        "logged in as the local alice"
    );
    b.shot("sso-not-linked").await;

    // A callback nobody started (or one used already) is refused.
    b.goto("/login/oidc/callback?code=stolen&state=forged")
        .await;
    let main = b.text("main").await;
    assert!(main.contains("expired or was already used"), "{main}");
    b.client.close().await.unwrap();
}

/// Fills the provider's login form (the provider may remember the browser's
/// session there: then it sends the browser straight back).
async fn sso_provider_login(b: &mut Browser, provider: &OidcProvider, user: &str, password: &str) {
    let at_provider = b
        .client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#id_username"))
        .await;
    if let Err(e) = at_provider {
        b.fail(format!(
            "no login form at the provider {}: {e}",
            provider.issuer
        ))
        .await;
    }
    b.fill("#id_username", user).await;
    b.fill("#id_password", password).await;
    b.click("#login-submit").await;
}
