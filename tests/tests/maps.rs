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

/// No hot path calls `memset`, `memcpy` or `memmove`: the BPF versions (compiler_builtins)
/// move one byte per loop round, ~5 instructions a byte, and LLVM emits a call for a zeroed
/// or copied struct whenever it sees fit (docs/benchmarks.md: a 57-byte `memset` crept into
/// the outbound parse once, +35 ns a packet). Hot structs are zeroed with 8-byte stores
/// (`dslite-ebpf/src/zeroed.rs`); this checks the built object's relocations.
#[test]
fn hot_paths_call_no_byte_loop_memset() {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
    let path = dslite_tests::bpf_object();
    let bytes = std::fs::read(&path).expect("reading the kernel object");
    let obj = object::File::parse(&*bytes).expect("parsing the kernel object");
    // The programs' entry points and the functions every established packet runs.
    const HOT: &[&str] = &[
        "dslite_aftr",
        "dslite_b4",
        "from_b4",
        "parse_from_b4",
        "from_internet",
        "translate_source",
        "encapsulate",
        "decapsulate",
        "hairpin",
        "redirect_v4",
        "fib_redirect",
        "note_peer",
        "b4_verdict",
        "destination_allowed",
        "lookup_or_create",
        "note_inbound",
    ];
    let funcs: Vec<(object::SectionIndex, u64, u64, String)> = obj
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let name = s.name().ok()?.to_string();
            Some((
                s.section_index()?,
                s.address(),
                s.address() + s.size(),
                name,
            ))
        })
        .collect();
    let mut checked = 0;
    let mut offenders = Vec::new();
    for section in obj.sections() {
        for (offset, rel) in section.relocations() {
            let RelocationTarget::Symbol(i) = rel.target() else {
                continue;
            };
            let Ok(target) = obj
                .symbol_by_index(i)
                .and_then(|s| s.name().map(str::to_string))
            else {
                continue;
            };
            let Some((_, _, _, f)) = funcs
                .iter()
                .find(|(si, lo, hi, _)| *si == section.index() && (*lo..*hi).contains(&offset))
            else {
                continue;
            };
            if !HOT.iter().any(|h| f.contains(h)) {
                continue;
            }
            checked += 1;
            if matches!(target.as_str(), "memset" | "memcpy" | "memmove") {
                offenders.push(format!("{f} calls {target}"));
            }
        }
    }
    assert!(
        checked > 0,
        "no relocation found in any hot function: the check is blind"
    );
    assert!(offenders.is_empty(), "{offenders:#?}");
}
