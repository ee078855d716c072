//! The kernel object's maps are exactly `dslite_common::map_list::MAPS`: the same names,
//! kinds, key and value sizes, default sizes and flags. The controller sizes and opens maps
//! by that list, so a map changed on one side only fails here, not at load time in the field.

use std::collections::BTreeMap;

use dslite_common::map_list::MAPS;

/// aya-log's own map (the log records' ring buffer), not one of dslite's.
const AYA_LOG_MAP: &str = "AYA_LOGS";

type Shape = (u32, u32, u32, u32, u32);

#[test]
fn object_maps_are_the_list() {
    let path = dslite_tests::bpf_object();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {} (run `cargo xtask build-ebpf`): {e}",
            path.display()
        )
    });
    let obj = aya_obj::Object::parse(&bytes).expect("parsing the kernel object");
    // Sections the loader turns into maps (.rodata, .bss, ...) start with a dot.
    let object: BTreeMap<String, Shape> = obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.') && name.as_str() != AYA_LOG_MAP)
        .map(|(name, m)| {
            let shape = (
                m.map_type(),
                m.key_size(),
                m.value_size(),
                m.max_entries(),
                m.map_flags(),
            );
            (name.clone(), shape)
        })
        .collect();
    let list: BTreeMap<String, Shape> = MAPS
        .iter()
        .map(|s| {
            let shape = (
                s.kind as u32,
                s.key_size,
                s.value_size,
                s.max_entries,
                s.flags,
            );
            (s.name.to_string(), shape)
        })
        .collect();
    assert_eq!(MAPS.len(), list.len(), "a name twice in map_list::MAPS");
    for (name, shape) in &object {
        assert_eq!(
            list.get(name),
            Some(shape),
            "map {name} (kind, key size, value size, max entries, flags): the object has \
             {shape:?}, map_list::MAPS {:?}",
            list.get(name)
        );
    }
    for name in list.keys() {
        assert!(
            object.contains_key(name),
            "map {name} is listed but not in the object"
        );
    }
}
