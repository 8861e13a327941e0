//! `measure [-n N] -- CMD [ARGS…] [--then CMD [ARGS…]]…`: median wall time, in milliseconds.
//!
//! Runs the sequence of commands N times (default 5) and prints the median duration of one
//! sequence in milliseconds with one decimal on stdout (min and max go to stderr). Busybox's
//! `date` has no sub-second format, so shell scripts cannot time things themselves. Each
//! command's output is captured; if any run fails, its output is shown and the exit status is 1.

use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((n, cmds)) = parse(&args) else {
        eprintln!("usage: measure [-n N] -- CMD [ARGS...] [--then CMD [ARGS...]]...");
        return ExitCode::from(2);
    };
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        for cmd in &cmds {
            match Command::new(&cmd[0]).args(&cmd[1..]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    eprintln!("measure: `{}` failed ({})", cmd.join(" "), out.status);
                    eprint!("{}", String::from_utf8_lossy(&out.stdout));
                    eprint!("{}", String::from_utf8_lossy(&out.stderr));
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("measure: cannot run {}: {e}", cmd[0]);
                    return ExitCode::FAILURE;
                }
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let median = vfio_gate_tests::median_ms(&mut samples).expect("n >= 1");
    eprintln!(
        "measure: {n} runs, min {:.1} ms, median {median:.1} ms, max {:.1} ms",
        samples[0],
        samples[n - 1]
    );
    println!("{median:.1}");
    ExitCode::SUCCESS
}

fn parse(args: &[String]) -> Option<(usize, Vec<Vec<String>>)> {
    let mut n = 5;
    let mut i = 0;
    while i < args.len() && args[i] != "--" {
        match args[i].as_str() {
            "-n" => {
                n = args.get(i + 1)?.parse().ok().filter(|&n| n > 0)?;
                i += 2;
            }
            _ => return None,
        }
    }
    let rest = args.get(i + 1..)?;
    let cmds: Vec<Vec<String>> = rest
        .split(|a| a == "--then")
        .map(<[String]>::to_vec)
        .collect();
    if cmds.iter().any(Vec::is_empty) {
        return None;
    }
    Some((n, cmds))
}
