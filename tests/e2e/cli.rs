//! The listing commands work the same with the daemon running (over its control socket) and
//! stopped (opening the store themselves).

use std::os::unix::fs::PermissionsExt;

use crate::support::{Setup, fixture};
use gancho_core::{Clock as _, SystemClock};

#[test]
fn events_are_listed_through_the_socket_and_directly_alike() {
    let setup = Setup::standard();
    let daemon = setup.start();
    for file in [
        "mailjet/sent.json",
        "mailjet/open.json",
        "mailjet/click.json",
    ] {
        assert_eq!(daemon.post_mailjet(&fixture(file)).status, 200);
    }
    let socket = setup.dir.path().join("data/gancho.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    let data_mode = std::fs::metadata(setup.dir.path().join("data"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(data_mode, 0o700, "data folder mode");

    let queries: [&[&str]; 4] = [
        &[],
        &["--source", "mailjet", "--type", "open"],
        &[
            "--source",
            "mailjet",
            "--type",
            "sent",
            "--key",
            "email=api@mailjet.com",
        ],
        &["--key", "CustomID=helloworld", "--limit", "2"],
    ];
    let live: Vec<_> = queries.iter().map(|q| setup.events(q)).collect();
    let table_live = setup.command(&["events"]);
    assert_eq!(live[0].len(), 3);
    assert_eq!(live[1].len(), 1);
    assert_eq!(live[2].len(), 1);

    assert_eq!(daemon.terminate().code(), Some(0));
    assert!(!socket.exists());
    let stopped: Vec<_> = queries.iter().map(|q| setup.events(q)).collect();
    assert_eq!(live, stopped);
    let table_stopped = setup.command(&["events"]);
    assert_eq!(table_live.stdout, table_stopped.stdout);
    let table = String::from_utf8(table_stopped.stdout).unwrap();
    assert!(table.contains("mailjet.open"), "{table}");
    assert!(table.contains("MessageID=19421777396190490"), "{table}");
}

#[test]
fn since_filters_by_event_time() {
    let setup = Setup::standard();
    let daemon = setup.start();
    let now = u64::try_from(SystemClock.now().timestamp()).unwrap();
    let old = format!(
        r#"{{"kind":"withdrawal","at":{},"id":"old","account":"A"}}"#,
        now - 3 * 3600
    );
    let new = format!(
        r#"{{"kind":"withdrawal","at":{},"id":"new","account":"A"}}"#,
        now - 60
    );
    assert_eq!(daemon.post("bank", old.as_bytes()).status, 200);
    assert_eq!(daemon.post("bank", new.as_bytes()).status, 200);
    let recent = setup.events(&["--since", "1h"]);
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["id"], "p:new");
    let indexed = setup.events(&[
        "--source",
        "bank",
        "--type",
        "withdrawal",
        "--key",
        "account=A",
        "--since",
        "1h",
    ]);
    assert_eq!(indexed, recent);
    assert_eq!(setup.events(&["--since", "4h"]).len(), 2);
}

#[test]
fn listing_a_store_that_never_existed_says_so() {
    let setup = Setup::standard();
    let out = setup.command(&["events"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no store at"), "{err}");
}
