//! `hv-sim`: command-line front end.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hv-sim",
    version,
    about = "Userspace hypervisor simulator for pvops"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every descriptor op through a backend and check its effect.
    Demo,
    /// Decode 8-byte descriptors (hex, optional 0x) into their fields.
    Explain {
        /// Descriptors, 16 hex digits each.
        #[arg(required = true)]
        hex: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Demo => {
            println!(
                "hv-sim demo: native backend, in-process, against the SoftCpu instruction model"
            );
            println!("(no KVM guest yet: booting a real kernel is the 'Run a real guest' issue)");
            let report = hv_sim::demo::run_native_in_process();
            for c in &report.checks {
                println!(
                    "  [{}] {} — {}",
                    if c.passed { "pass" } else { "FAIL" },
                    c.name,
                    c.detail
                );
            }
            println!(
                "  instructions executed by the CPU model: {}",
                report.instructions.join("; ")
            );
            println!("{}", report.summary());
            if report.passed() == report.checks.len() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Explain { hex } => {
            let mut status = ExitCode::SUCCESS;
            for h in hex {
                match hv_sim::explain::parse_hex_u64(&h) {
                    Ok(v) => print!("{}", hv_sim::explain::explain(v)),
                    Err(e) => {
                        eprintln!("hv-sim explain: {e}");
                        status = ExitCode::from(2);
                    }
                }
            }
            status
        }
    }
}
