//! `rds-initramfs`: the initramfs's `/init` in a microVM guest; see [`rds_agent::initramfs`].

fn main() {
    let e = rds_agent::initramfs::main();
    eprintln!("rds-initramfs: {e:#}");
    std::process::exit(1);
}
