//! `phalanx-fuzz TARGET`: one of `phalanx_node::fuzzing::TARGETS` under AFL (persistent mode:
//! the inputs come through stdin, many per process). Built with `cargo afl build --release`;
//! run by `tests/fuzz`.

fn main() {
    let target = std::env::args().nth(1).unwrap_or_default();
    if !phalanx_node::fuzzing::TARGETS.contains(&target.as_str()) {
        eprintln!("usage: phalanx-fuzz TARGET (one of {})", phalanx_node::fuzzing::TARGETS.join(", "));
        std::process::exit(2);
    }
    afl::fuzz!(|data: &[u8]| {
        phalanx_node::fuzzing::run(&target, data);
    });
}
