//! Interned keys and the per-shard totals tables indexed by them: the hot
//! path hashes an org or course string once, then works on vector slots.

use std::collections::{HashMap, HashSet};

/// Maps with a fast, seeded hasher: keys come from the network, so the seed
/// matters; SipHash's extra strength does not.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Gives each distinct key a small integer for the life of the process.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: FastMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    pub(crate) fn id(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(key.to_owned());
        self.ids.insert(key.to_owned(), id);
        id
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// Every key with its id, in id order.
    pub(crate) fn names(&self) -> impl ExactSizeIterator<Item = (u32, &str)> {
        self.names.iter().enumerate().map(|(id, name)| (id as u32, name.as_str()))
    }
}

/// Values by interned key, and the keys changed since the last drain. A
/// value equal to `T::default()` means absent.
#[derive(Debug)]
pub(crate) struct Table<T> {
    values: Vec<T>,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { values: Vec::new(), dirty: Vec::new(), is_dirty: Vec::new() }
    }
}

impl<T: Default + Clone + PartialEq> Table<T> {
    /// Sets a value without marking it changed (for loading stored state).
    pub(crate) fn load(&mut self, id: u32, value: T) {
        self.grow(id);
        self.values[id as usize] = value;
    }

    pub(crate) fn update(&mut self, id: u32, f: impl FnOnce(&mut T)) {
        self.grow(id);
        f(&mut self.values[id as usize]);
        if !self.is_dirty[id as usize] {
            self.is_dirty[id as usize] = true;
            self.dirty.push(id);
        }
    }

    fn grow(&mut self, id: u32) {
        let need = id as usize + 1;
        if self.values.len() < need {
            self.values.resize(need, T::default());
            self.is_dirty.resize(need, false);
        }
    }

    /// Present (non-default) values.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        let zero = T::default();
        self.values.iter().enumerate().filter(move |(_, v)| **v != zero).map(|(i, v)| (i as u32, v))
    }

    /// Every changed key with its value, `None` where it became absent.
    pub(crate) fn drain_dirty(&mut self) -> impl Iterator<Item = (u32, Option<T>)> + '_ {
        let zero = T::default();
        let Table { values, dirty, is_dirty } = self;
        dirty.drain(..).map(move |id| {
            is_dirty[id as usize] = false;
            let v = &values[id as usize];
            (id, (*v != zero).then(|| v.clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_reports_each_changed_key_once_and_zero_as_absent() {
        let mut t: Table<i64> = Table::default();
        t.load(0, 5);
        t.update(3, |v| *v += 2);
        t.update(3, |v| *v += 1);
        t.update(0, |v| *v -= 5);
        assert_eq!(t.iter().collect::<Vec<_>>(), [(3, &3)]);
        assert_eq!(t.drain_dirty().collect::<Vec<_>>(), [(3, Some(3)), (0, None)]);
        assert_eq!(t.drain_dirty().count(), 0);
    }

    #[test]
    fn interned_ids_are_stable() {
        let mut i = Interner::default();
        let (a, b) = (i.id("a"), i.id("b"));
        assert_eq!((i.id("a"), i.name(b)), (a, "b"));
    }
}
