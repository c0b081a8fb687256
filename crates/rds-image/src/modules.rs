//! Choosing the kernel modules the initramfs loads, and their load order, from the modules' own
//! metadata: the `depends=` entry of each `.ko`'s `.modinfo` ELF section (what `depmod` reads).
//! No hand-kept order: a module is always listed after everything it depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use crate::ImageError;

/// Module names compare with `-` and `_` as the same character, as the kernel does.
pub fn normalize_name(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// The `depends=` list of a module, read from the `.modinfo` section of its ELF object.
pub fn module_depends(ko: &[u8]) -> Result<Vec<String>, ImageError> {
    let file = object::File::parse(ko).map_err(|e| ImageError::Module(format!("not an ELF object: {e}")))?;
    let section = file.section_by_name(".modinfo").ok_or_else(|| ImageError::Module("no .modinfo section".into()))?;
    let data = section.data().map_err(|e| ImageError::Module(format!("unreadable .modinfo: {e}")))?;
    Ok(depends_from_modinfo(data))
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section for `depends=`.
fn depends_from_modinfo(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| String::from_utf8_lossy(list).split(',').map(normalize_name).collect::<Vec<_>>())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Where a kernel's loadable modules are and which ones it has built in.
pub struct ModuleTree {
    /// `lib/modules/<version>` of an unpacked kernel package.
    root: PathBuf,
    /// Module name → path relative to `root`.
    files: BTreeMap<String, PathBuf>,
    /// Names listed in `modules.builtin`.
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Indexes `lib/modules/<version>` (as unpacked from the kernel package) by module name.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let mut files = BTreeMap::new();
        index_ko_files(root, root, &mut files)?;
        let builtin_path = root.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => text.lines().filter_map(module_name_of_path).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(ImageError::io("reading", builtin_path)(e)),
        };
        Ok(ModuleTree { root: root.to_path_buf(), files, builtin })
    }

    /// Modules to load for `roots`, dependencies first, as paths relative to the tree root.
    pub fn load_order(&self, roots: &[String]) -> Result<Vec<PathBuf>, ImageError> {
        let mut depends = BTreeMap::new();
        let mut pending: Vec<String> = roots.iter().map(|r| normalize_name(r)).collect();
        while let Some(name) = pending.pop() {
            if depends.contains_key(&name) || self.builtin.contains(&name) {
                continue;
            }
            let Some(rel) = self.files.get(&name) else {
                continue;
            };
            let path = self.root.join(rel);
            let bytes = std::fs::read(&path).map_err(ImageError::io("reading", &path))?;
            let deps = module_depends(&bytes).map_err(|e| ImageError::Module(format!("{}: {e}", path.display())))?;
            pending.extend(deps.iter().cloned());
            depends.insert(name, deps);
        }
        let order = load_order(roots, &depends, &self.builtin)?;
        Ok(order.iter().map(|name| self.files[name].clone()).collect())
    }
}

/// Orders `roots` and their transitive `depends` so each module follows its dependencies.
///
/// `depends` maps every loadable module to its dependencies; names in `builtin` need no loading.
/// Ties are broken by name so the output is stable. Unknown names and cycles are errors.
pub fn load_order(
    roots: &[String],
    depends: &BTreeMap<String, Vec<String>>,
    builtin: &BTreeSet<String>,
) -> Result<Vec<String>, ImageError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        depends: &BTreeMap<String, Vec<String>>,
        builtin: &BTreeSet<String>,
        marks: &mut BTreeMap<String, Mark>,
        chain: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        if builtin.contains(name) {
            return Ok(());
        }
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                return Err(ImageError::Module(format!("dependency cycle: {} -> {name}", chain.join(" -> "))));
            }
            None => {}
        }
        let deps = depends.get(name).ok_or_else(|| {
            let needed_by = chain.last().map(|p| format!(" (needed by {p})")).unwrap_or_default();
            ImageError::Module(format!(
                "module {name}{needed_by} is neither built in nor shipped by the kernel package"
            ))
        })?;
        marks.insert(name.to_string(), Mark::Visiting);
        chain.push(name.to_string());
        let mut sorted: Vec<&String> = deps.iter().collect();
        sorted.sort();
        for dep in sorted {
            visit(dep, depends, builtin, marks, chain, order)?;
        }
        chain.pop();
        marks.insert(name.to_string(), Mark::Done);
        order.push(name.to_string());
        Ok(())
    }

    let mut marks = BTreeMap::new();
    let mut order = Vec::new();
    let mut sorted_roots: Vec<String> = roots.iter().map(|r| normalize_name(r)).collect();
    sorted_roots.sort();
    sorted_roots.dedup();
    for root in &sorted_roots {
        visit(root, depends, builtin, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// `kernel/fs/ext4/ext4.ko` → `ext4`; also accepts `.ko.xz`/`.ko.zst`/`.ko.gz`.
fn module_name_of_path(path: &str) -> Option<String> {
    let file = path.trim().rsplit('/').next()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(normalize_name(stem))
}

fn index_ko_files(root: &Path, dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(dir).map_err(ImageError::io("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(ImageError::io("listing", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(ImageError::io("inspecting", &path))?;
        if kind.is_dir() {
            index_ko_files(root, &path, files)?;
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".ko.xz") || name.ends_with(".ko.zst") || name.ends_with(".ko.gz") {
            // Debian bookworm ships plain .ko files; compressed ones would need decompressing first.
            return Err(ImageError::Module(format!(
                "{} is compressed; this builder only handles uncompressed .ko files",
                path.display()
            )));
        }
        if let Some(module) = module_name_of_path(name) {
            let rel = path.strip_prefix(root).expect("walked from root").to_path_buf();
            files.insert(module, rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges.iter().map(|(name, deps)| (name.to_string(), deps.iter().map(|d| d.to_string()).collect())).collect()
    }

    fn roots(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn dependencies_load_before_their_users() {
        let depends = graph(&[
            ("vmw_vsock_virtio_transport", &["vmw_vsock_virtio_transport_common", "vsock", "virtio", "virtio_ring"]),
            ("vmw_vsock_virtio_transport_common", &["vsock"]),
            ("vsock", &[]),
            ("virtio", &[]),
            ("virtio_ring", &[]),
            ("virtio_blk", &["virtio", "virtio_ring"]),
        ]);
        let order =
            load_order(&roots(&["virtio_blk", "vmw_vsock_virtio_transport"]), &depends, &BTreeSet::new()).unwrap();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing from {order:?}"));
        assert!(pos("virtio") < pos("virtio_blk"));
        assert!(pos("virtio_ring") < pos("virtio_blk"));
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
        assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
        assert_eq!(order.len(), 6, "each module exactly once: {order:?}");
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_fail() {
        let depends = graph(&[("overlay", &[]), ("virtio_blk", &["virtio"])]);
        let builtin: BTreeSet<String> = ["ext4", "virtio"].iter().map(|s| s.to_string()).collect();
        let order = load_order(&roots(&["ext4", "virtio-blk", "overlay"]), &depends, &builtin).unwrap();
        assert_eq!(order, vec!["overlay", "virtio_blk"]);

        let err = load_order(&roots(&["virtio_net"]), &depends, &builtin).unwrap_err();
        assert!(err.to_string().contains("virtio_net"), "{err}");
    }

    #[test]
    fn cycles_are_reported() {
        let depends = graph(&[("a", &["b"]), ("b", &["a"])]);
        let err = load_order(&roots(&["a"]), &depends, &BTreeSet::new()).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn order_does_not_depend_on_input_order() {
        let depends = graph(&[("x", &["c", "a", "b"]), ("a", &[]), ("b", &[]), ("c", &[])]);
        let one = load_order(&roots(&["x", "a"]), &depends, &BTreeSet::new()).unwrap();
        let two = load_order(&roots(&["a", "x"]), &depends, &BTreeSet::new()).unwrap();
        assert_eq!(one, two);
        assert_eq!(one, vec!["a", "b", "c", "x"]);
    }

    #[test]
    fn modinfo_depends_are_parsed_and_normalized() {
        let modinfo = b"license=GPL\0depends=virtio,virtio-ring\0name=virtio_blk\0vermagic=6.1\0";
        assert_eq!(depends_from_modinfo(modinfo), vec!["virtio", "virtio_ring"]);
        assert!(depends_from_modinfo(b"depends=\0name=virtio\0").is_empty());
    }

    #[test]
    fn builtin_paths_map_to_module_names() {
        assert_eq!(module_name_of_path("kernel/fs/ext4/ext4.ko").as_deref(), Some("ext4"));
        assert_eq!(module_name_of_path("kernel/drivers/virtio/virtio-mmio.ko.xz").as_deref(), Some("virtio_mmio"));
        assert_eq!(module_name_of_path("modules.order"), None);
    }
}
