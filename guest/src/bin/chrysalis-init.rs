//! `chrysalis-init`: the guest's PID 1 (static, musl). See `init/mod.rs` and docs/image.md ("Boot").

#[path = "../init/mod.rs"]
mod init;

fn main() {
    // Mounting over / and powering off is only right inside the guest: refuse anywhere else.
    if std::process::id() != 1 {
        eprintln!("chrysalis-init: refusing to run: this is the guest VM's PID 1, not a command");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        init::fatal(&anyhow::anyhow!("panic: {info}"))
    }));
    match init::run() {
        Ok(never) => match never {},
        Err(e) => init::fatal(&e),
    }
}
