//! The Janus operator. The controllers are built in the operator issue; until then
//! this binary only reports the API version it will serve, so that the workspace
//! layout matches `shared/DESIGN.md`.

fn main() {
    eprintln!(
        "janus-operator: controllers for {}/{} are not built yet; run jobs locally with `janus train`",
        janus_crds::GROUP,
        janus_crds::VERSION
    );
    std::process::exit(2);
}
