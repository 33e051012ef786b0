//! The CI load run: 50 simulated clients against two real server processes, 2-second rounds,
//! every message delivered.

use std::process::Command;

#[test]
fn fifty_clients_two_second_rounds_everything_delivered() {
    let out = Command::new(env!("CARGO_BIN_EXE_mpm-load"))
        .args([
            "run",
            "--clients",
            "50",
            "--rounds",
            "4",
            "--round-ms",
            "2000",
        ])
        .output()
        .expect("runs mpm-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "mpm-load failed:\n{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("delivered "))
        .expect("a delivery line");
    let counts = line.split_whitespace().nth(1).expect("n/m");
    let (n, m) = counts.split_once('/').expect("n/m");
    assert_eq!(n, m, "{line}");
    assert_eq!(m, "200", "50 clients x 4 rounds of new messages");
    // Late or refused writes and abandoned rounds are retransmitted like a real client does;
    // what must hold is that every message arrives.
}
