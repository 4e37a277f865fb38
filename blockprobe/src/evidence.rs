//! A queue of evidence (blocking calls, GIL waits, CPU samples of one loop thread)
//! waiting for the stall it belongs to, bounded by count and by bytes: stacks of 127
//! frames with 4 KiB names would otherwise make each item hundreds of KiB.

use std::collections::VecDeque;

use crate::model::Frame;

/// Items kept per queue.
pub const MAX_ITEMS: usize = 256;
/// Bytes kept per queue (names and files of the stacks, about).
pub const MAX_BYTES: usize = 1 << 20;

/// What an item of evidence holds, in bytes, about.
pub trait Weigh {
    /// Its bytes, about.
    fn bytes(&self) -> usize;
}

/// The bytes a stack holds, about.
pub fn stack_bytes(stack: &[Frame]) -> usize {
    (stack.iter())
        .map(|f| std::mem::size_of::<Frame>() + f.function.capacity() + f.file.capacity())
        .sum()
}

/// Evidence in arrival order; the oldest goes first when a bound is reached.
#[derive(Debug)]
pub struct Queue<T> {
    items: VecDeque<T>,
    bytes: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T: Weigh> Queue<T> {
    /// Appends `item`, dropping the oldest ones past [`MAX_ITEMS`] or [`MAX_BYTES`] (the
    /// newest is always kept).
    pub fn push(&mut self, item: T) {
        self.bytes += item.bytes();
        self.items.push_back(item);
        while self.items.len() > 1
            && (self.items.len() > MAX_ITEMS || self.bytes > MAX_BYTES)
            && let Some(oldest) = self.items.pop_front()
        {
            self.bytes -= oldest.bytes();
        }
    }

    /// The newest item.
    pub fn newest(&self) -> Option<&T> {
        self.items.back()
    }

    /// Takes the items that ended (`at`) inside `[start, end]`; drops older ones and
    /// keeps later ones for the next stall.
    pub fn take_window(&mut self, start: u64, end: u64, at: impl Fn(&T) -> u64) -> Vec<T> {
        let mut inside = Vec::new();
        for item in std::mem::take(&mut self.items) {
            let t = at(&item);
            if t > end {
                self.items.push_back(item);
                continue;
            }
            self.bytes -= item.bytes();
            if t >= start {
                inside.push(item);
            }
        }
        inside
    }

    /// The bytes held, about.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(u64, Vec<Frame>);
    impl Weigh for Item {
        fn bytes(&self) -> usize {
            stack_bytes(&self.1)
        }
    }

    fn item(at: u64, frames: usize, name_bytes: usize) -> Item {
        let frame = Frame {
            function: "f".repeat(name_bytes),
            file: "/app/x.py".into(),
            line: 1,
        };
        Item(at, vec![frame; frames])
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let mut q = Queue::default();
        for at in 0..1000 {
            q.push(item(at, 1, 1));
        }
        assert_eq!(q.items.len(), MAX_ITEMS);
        assert_eq!(q.newest().unwrap().0, 999);
        // Stacks of 127 frames with 4 KiB names: 500 KiB each.
        for at in 1000..1100 {
            q.push(item(at, 127, 4096));
            assert!(q.bytes() <= MAX_BYTES || q.items.len() == 1);
        }
        assert!(q.items.len() <= 2, "{}", q.items.len());
        assert_eq!(q.newest().unwrap().0, 1099);
        // Taking a window keeps the count right.
        let taken = q.take_window(1099, 1099, |i| i.0);
        assert_eq!(taken.len(), 1);
        assert_eq!(q.bytes(), 0);
    }
}
