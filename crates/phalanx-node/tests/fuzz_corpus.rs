//! Every file of the fuzz seed corpus (`fuzz/corpus/TARGET/`) and every input a fuzz run found
//! to crash or hang (`fuzz/regressions/TARGET/`, kept once fixed) through its target of
//! `phalanx_node::fuzzing`, in every test run: none may panic. The heartbeat seeds are
//! generated (`PHALANX_WRITE_SEEDS=1` writes them again after a wire format change).

use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_corpus_and_regression_input_is_answered_without_a_panic() {
    let seeds = phalanx_node::fuzzing::heartbeat_seeds();
    let hb = fuzz_dir().join("corpus/heartbeat");
    if std::env::var_os("PHALANX_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&hb).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(hb.join(format!("v{}.bin", i + 2)), s).unwrap();
        }
    }
    for (i, s) in seeds.iter().enumerate() {
        let file = hb.join(format!("v{}.bin", i + 2));
        assert_eq!(
            std::fs::read(&file).ok().as_ref(),
            Some(s),
            "{} is not today's heartbeat (PHALANX_WRITE_SEEDS=1 writes it)",
            file.display()
        );
    }
    let mut ran = 0;
    for target in phalanx_node::fuzzing::TARGETS {
        let mut files = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
                continue;
            };
            for f in dir {
                let path = f.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                assert!(phalanx_node::fuzzing::run(target, &data));
                files += 1;
            }
        }
        assert!(files > 0, "no seed for {target} in fuzz/corpus/{target}");
        ran += files;
    }
    eprintln!("{ran} inputs through {} targets", phalanx_node::fuzzing::TARGETS.len());
}
