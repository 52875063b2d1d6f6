//! Byte-level compressed radix tree holding prefix and parameter routes.
//!
//! Lookup walks down along the request path and visits, on the way back up,
//! every node whose key is a byte-prefix of the path: longest key first, exactly
//! like radixtree's `raxSeek("<=")` + `radix_tree_up` loop. Cost is bounded by the
//! path length, not by the number of routes; no allocation.

pub(crate) struct Node<T> {
    /// Edge label from the parent to this node.
    label: Box<[u8]>,
    /// Values stored under the key ending exactly here, in match order.
    pub(crate) values: Vec<T>,
    /// First byte of each child's label, sorted (parallel to `children`).
    child_keys: Vec<u8>,
    children: Vec<Node<T>>,
}

impl<T> Node<T> {
    pub(crate) fn root() -> Self {
        Node::with_label(Box::default())
    }

    fn with_label(label: Box<[u8]>) -> Self {
        Node {
            label,
            values: Vec::new(),
            child_keys: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Inserts `value` under `key` (relative to this node).
    pub(crate) fn insert(&mut self, key: &[u8], value: T) {
        let Some(&first) = key.first() else {
            self.values.push(value);
            return;
        };
        match self.child_keys.binary_search(&first) {
            Ok(i) => {
                let child = &mut self.children[i];
                let common = child
                    .label
                    .iter()
                    .zip(key)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common < child.label.len() {
                    // Split the edge: child becomes `label[..common]` with the old
                    // node hanging below it under `label[common..]`.
                    let head: Box<[u8]> = child.label[..common].into();
                    let mut old = std::mem::replace(child, Node::with_label(head));
                    old.label = old.label[common..].into();
                    child.child_keys.push(old.label[0]);
                    child.children.push(old);
                }
                child.insert(&key[common..], value);
            }
            Err(i) => {
                let mut node = Node::with_label(key.into());
                node.values.push(value);
                self.child_keys.insert(i, first);
                self.children.insert(i, node);
            }
        }
    }

    /// Applies `f` to every node (build-time post-processing, e.g. sorting).
    pub(crate) fn for_each_mut(&mut self, f: &mut impl FnMut(&mut Vec<T>)) {
        f(&mut self.values);
        for c in &mut self.children {
            c.for_each_mut(f);
        }
    }

    /// Visits the values of every node whose key is a prefix of `path`
    /// (`path` is relative to this node), deepest node first, until `f` returns
    /// `Some`.
    pub(crate) fn find_map<R>(
        &self,
        path: &[u8],
        f: &mut impl FnMut(&T) -> Option<R>,
    ) -> Option<R> {
        if let Some(&b) = path.first() {
            if let Ok(i) = self.child_keys.binary_search(&b) {
                let c = &self.children[i];
                if let Some(rest) = path.strip_prefix(&*c.label) {
                    if let Some(r) = c.find_map(rest, f) {
                        return Some(r);
                    }
                }
            }
        }
        self.values.iter().find_map(f)
    }
}
