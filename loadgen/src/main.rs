fn main() { eprintln!("pulsegate-loadgen: not built yet"); std::process::exit(2); }
