//! The committed `crds/*.yaml` are exactly what `openemr-operator crd` generates.

use std::collections::BTreeSet;
use std::path::Path;

use openemr_operator::api;

#[test]
fn committed_crds_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected = BTreeSet::new();
    for crd in api::crds() {
        let name = api::crd_file_name(&crd);
        let generated = api::crd_yaml(&crd).unwrap();
        let committed = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("crds/{name} missing ({e}); run `make crds`"));
        assert!(
            committed == generated,
            "crds/{name} is stale; run `make crds` and commit it"
        );
        expected.insert(name);
    }
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(present, expected, "crds/ holds exactly the generated files");
}
