//! What the last applied run read from each manifest file: a digest of its content (directory
//! sources, which have no revisions to diff) and the resources it declared. An incremental run
//! starts from it: which files changed, and what a changed file used to declare.
//!
//! It lives from one run to the next, so it is stored flat: every path and ARN text in one
//! buffer, the files and their declarations in two sorted vectors. Kept as a map of small
//! per-file allocations, it was built while a run's garbage was live and ended up spread over
//! the whole heap: at 10,000 files those few MB of live data kept ~20 MB of freed pages
//! resident (measured after a run that parsed every live policy).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A range of `FileIndex::text`.
type Span = (u32, u32);

#[derive(Debug, Default)]
pub(super) struct FileIndex {
    text: Vec<u8>,
    /// Sorted by the bytes of the path.
    files: Vec<File>,
    /// ARN text and line; each file's declarations are contiguous.
    declared: Vec<(Span, u32)>,
}

#[derive(Debug, Clone, Copy)]
struct File {
    path: Span,
    digest: u64,
    /// Start and length in `FileIndex::declared`.
    declared: (u32, u32),
}

/// One file as a run saw it: source-relative path, digest (0 when not tracked), and the ARNs it
/// declares with their lines.
pub(super) type FileEntry = (PathBuf, u64, Vec<(String, usize)>);

impl FileIndex {
    pub(super) fn new(entries: impl IntoIterator<Item = FileEntry>) -> Self {
        let mut entries: Vec<FileEntry> = entries.into_iter().collect();
        // By bytes, the order `find` searches in. `Path`'s own order compares components, and
        // the two disagree where `-` or `.` meets `/`: `prod/x.yaml` comes before
        // `prod-eu/x.yaml` by components, after it by bytes, and a search in the wrong order
        // silently found nothing.
        entries.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
        // One file may come in several entries (its digest, each resource it declares).
        entries.dedup_by(|b, a| {
            let same = a.0 == b.0;
            if same {
                if a.1 == 0 {
                    a.1 = b.1;
                }
                a.2.append(&mut b.2);
            }
            same
        });
        let size: usize = entries
            .iter()
            .map(|(p, _, d)| p.as_os_str().len() + d.iter().map(|(a, _)| a.len()).sum::<usize>())
            .sum();
        let mut index = FileIndex {
            text: Vec::with_capacity(size),
            files: Vec::with_capacity(entries.len()),
            declared: Vec::with_capacity(entries.iter().map(|e| e.2.len()).sum()),
        };
        for (path, digest, declared) in entries {
            let path = index.push_text(path.as_os_str().as_bytes());
            let start = index.declared.len() as u32;
            for (arn, line) in &declared {
                let arn = index.push_text(arn.as_bytes());
                index.declared.push((arn, *line as u32));
            }
            index.files.push(File {
                path,
                digest,
                declared: (start, declared.len() as u32),
            });
        }
        index
    }

    fn push_text(&mut self, bytes: &[u8]) -> Span {
        let start = self.text.len() as u32;
        self.text.extend_from_slice(bytes);
        (start, bytes.len() as u32)
    }

    fn text(&self, (start, len): Span) -> &[u8] {
        &self.text[start as usize..(start + len) as usize]
    }

    fn path_of(&self, f: &File) -> &Path {
        Path::new(OsStr::from_bytes(self.text(f.path)))
    }

    fn find(&self, path: &Path) -> Option<&File> {
        let key = path.as_os_str().as_bytes();
        self.files
            .binary_search_by(|f| self.path_of(f).as_os_str().as_bytes().cmp(key))
            .ok()
            .map(|i| &self.files[i])
    }

    /// The ARNs (as text, as the manifest wrote them) and lines `path` declared.
    pub(super) fn declared(&self, path: &Path) -> impl Iterator<Item = (&str, usize)> {
        let range = self
            .find(path)
            .map(|f| f.declared.0 as usize..(f.declared.0 + f.declared.1) as usize)
            .unwrap_or(0..0);
        self.declared[range].iter().map(|&(arn, line)| {
            let arn = std::str::from_utf8(self.text(arn)).expect("stored from a String");
            (arn, line as usize)
        })
    }

    /// The files whose content differs between `old` and `self`, added and removed ones
    /// included: a directory source's counterpart of `git diff --name-only`.
    pub(super) fn changed_since(&self, old: &FileIndex) -> Vec<PathBuf> {
        let mut changed: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|f| {
                old.find(self.path_of(f))
                    .is_none_or(|o| o.digest != f.digest)
            })
            .map(|f| self.path_of(f).to_path_buf())
            .collect();
        changed.extend(
            old.files
                .iter()
                .map(|f| old.path_of(f))
                .filter(|p| self.find(p).is_none())
                .map(Path::to_path_buf),
        );
        changed.sort();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Declared<'a> = &'a [(&'a str, usize)];

    fn index(files: &[(&str, u64, Declared)]) -> FileIndex {
        FileIndex::new(files.iter().map(|(p, d, decl)| {
            let decl = decl.iter().map(|(a, l)| (a.to_string(), *l)).collect();
            (PathBuf::from(p), *d, decl)
        }))
    }

    #[test]
    fn looks_up_what_each_file_declared() {
        let i = index(&[
            ("m/b.yaml", 2, &[("arn-b1", 1), ("arn-b2", 7)]),
            ("m/a.yaml", 1, &[("arn-a", 3)]),
        ]);
        assert_eq!(i.files.len(), 2);
        let got: Vec<_> = i.declared(Path::new("m/b.yaml")).collect();
        assert_eq!(got, [("arn-b1", 1), ("arn-b2", 7)]);
        let got: Vec<_> = i.declared(Path::new("m/a.yaml")).collect();
        assert_eq!(got, [("arn-a", 3)]);
        assert_eq!(i.declared(Path::new("m/c.yaml")).count(), 0);
    }

    /// Names where a component ends just before `-` or `.` (`prod/`, `prod-eu/`, `prod.d/`)
    /// order differently by components and by bytes; every one must still be found.
    #[test]
    fn finds_files_whose_directories_share_a_prefix() {
        let names = [
            "prod/orders.yaml",
            "prod-eu/orders.yaml",
            "prod.d/orders.yaml",
            "prod/x/orders.yaml",
            "prod0/orders.yaml",
        ];
        let declared: Vec<[(&str, usize); 1]> = names.iter().map(|n| [(*n, 1)]).collect();
        let files: Vec<(&str, u64, Declared)> = names
            .iter()
            .zip(&declared)
            .enumerate()
            .map(|(i, (n, d))| (*n, i as u64 + 1, &d[..]))
            .collect();
        let i = index(&files);
        for n in names {
            let got: Vec<_> = i.declared(Path::new(n)).collect();
            assert_eq!(got, [(n, 1)], "{n}");
        }
        assert!(i.changed_since(&index(&files)).is_empty());
        let fewer = index(&files[1..]);
        assert_eq!(fewer.changed_since(&i), [PathBuf::from(names[0])]);
    }

    #[test]
    fn entries_for_one_file_are_merged() {
        let i = FileIndex::new([
            (PathBuf::from("a.yaml"), 0, vec![("x".to_string(), 1)]),
            (PathBuf::from("a.yaml"), 5, vec![("y".to_string(), 4)]),
        ]);
        assert_eq!(i.files.len(), 1);
        assert_eq!(i.files[0].digest, 5, "the digest survives the merge");
        let got: Vec<_> = i.declared(Path::new("a.yaml")).collect();
        assert_eq!(got, [("x", 1), ("y", 4)]);
    }

    #[test]
    fn changed_files_include_added_and_removed_ones() {
        let old = index(&[("a.yaml", 1, &[]), ("b.yaml", 2, &[]), ("c.yaml", 3, &[])]);
        let new = index(&[("a.yaml", 1, &[]), ("b.yaml", 9, &[]), ("d.yaml", 4, &[])]);
        assert_eq!(
            new.changed_since(&old),
            ["b.yaml", "c.yaml", "d.yaml"].map(PathBuf::from)
        );
        assert!(new.changed_since(&new).is_empty());
        assert_eq!(
            FileIndex::default().changed_since(&old),
            ["a.yaml", "b.yaml", "c.yaml"].map(PathBuf::from)
        );
    }
}
