//! Reads of a traced process's memory from the event pump: its stacks symbolized, a
//! thread's stack walked now. Each goes through the process's reader, a thread of its
//! own waited for at most [`READ_DEADLINE`], because a process's memory may never answer
//! (a page registered with userfaultfd that nobody serves, a file mapped from a hung
//! file system) and the pump must not wait with it. A process whose read missed the
//! deadline is slow: said once per miss (a warning naming the pid), its memory not read
//! while that read hangs (and for a pause after), its stacks left as `<unreadable>`
//! frames and counted as lost ([`MEMORY_TIMEOUT`]); its stalls are still reported, with
//! their duration, causes and syscall.

use blockprobe_common::stack::{MAX_FRAMES, RawStack, flags as stack_flags};

use super::Session;
use super::losses::MEMORY_TIMEOUT;
use crate::{
    deadline::NoAnswer,
    model::{Frame, UNREADABLE},
    python::{PythonProcess, READ_DEADLINE, Symbolized},
    session::sink::Status,
};

impl Session {
    /// Runs `read` on traced process `pid`, whose reads concern `stacks` stacks; `None`
    /// when `pid` is not traced or its memory did not answer in time (said at a miss;
    /// those stacks counted as lost, reported with the loss counters).
    pub(super) fn read_memory<T>(
        &mut self,
        pid: u32,
        stacks: u64,
        read: impl FnOnce(&mut PythonProcess) -> Result<T, NoAnswer>,
    ) -> anyhow::Result<Option<T>> {
        let Some(traced) = self.processes.get_mut(&pid) else {
            return Ok(None);
        };
        match read(&mut traced.python) {
            Ok(answer) => Ok(Some(answer)),
            Err(why) => {
                if why == NoAnswer::Missed {
                    self.sink.status(&Status::Warning {
                        pid: Some(pid),
                        message: format!(
                            "pid {pid}: its memory did not answer within {READ_DEADLINE:?}; \
                             its functions could not be read in time, so its stacks show as \
                             <unreadable> (counted as lost, {MEMORY_TIMEOUT}) until it answers again"
                        ),
                    })?;
                }
                self.unanswered_stacks += stacks;
                Ok(None)
            }
        }
    }

    /// The frames of `stacks` of process `pid`, each ending in its walk's marker, and
    /// the task of the first; `None` when `pid` is not traced or its memory did not
    /// answer in time.
    pub(super) fn try_symbolize(
        &mut self,
        pid: u32,
        stacks: Vec<RawStack>,
    ) -> anyhow::Result<Option<Symbolized>> {
        let flags: Vec<u32> = stacks.iter().map(|s| s.flags).collect();
        let count = stacks.len() as u64;
        let read = self.read_memory(pid, count, |python| python.symbolize(stacks))?;
        Ok(read.map(|mut symbolized| {
            for (frames, &flags) in symbolized.stacks.iter_mut().zip(&flags) {
                frames.extend(marker(flags));
            }
            symbolized
        }))
    }

    /// The frames of `stacks` of process `pid`, as [`Session::try_symbolize`] gives
    /// them, else none when `pid` is not traced, `<unreadable>` frames when its memory
    /// did not answer in time.
    pub(super) fn symbolize(
        &mut self,
        pid: u32,
        stacks: Vec<RawStack>,
    ) -> anyhow::Result<Symbolized> {
        let traced = self.processes.contains_key(&pid);
        let unread: Vec<Vec<Frame>> = (stacks.iter())
            .map(|s| match traced {
                true => unread_frames(s)
                    .into_iter()
                    .chain(marker(s.flags))
                    .collect(),
                false => Vec::new(),
            })
            .collect();
        Ok(self.try_symbolize(pid, stacks)?.unwrap_or(Symbolized {
            stacks: unread,
            task: None,
        }))
    }

    /// The frames of one stack of `pid`, as [`Session::symbolize`] gives them.
    pub(super) fn symbolize_one(
        &mut self,
        pid: u32,
        stack: Box<RawStack>,
    ) -> anyhow::Result<(Vec<Frame>, Option<String>)> {
        let mut symbolized = self.symbolize(pid, vec![*stack])?;
        Ok((symbolized.stacks.pop().unwrap_or_default(), symbolized.task))
    }

    /// The Python stack of thread state `tstate` of `pid`, walked from userspace now;
    /// `None` when `pid` is not traced or its memory did not answer in time.
    pub(super) fn walk_now(&mut self, pid: u32, tstate: u64) -> anyhow::Result<Option<Vec<Frame>>> {
        let walked = self.read_memory(pid, 1, |python| python.walk_now(tstate))?;
        Ok(walked.map(|(flags, mut frames)| {
            frames.extend(marker(flags));
            frames
        }))
    }
}

/// The frames of a stack whose code objects could not be read: one `<unreadable>` frame
/// per frame the kernel side captured.
fn unread_frames(stack: &RawStack) -> Vec<Frame> {
    let len = (stack.len as usize).min(MAX_FRAMES);
    (stack.frames[..len].iter())
        .filter(|raw| raw.code != 0)
        .map(|_| Frame::unreadable())
        .collect()
}

/// The frame that ends a cut walk, so a cut stack is never taken for a whole one:
/// `<truncated>` (deeper than the walk goes) or `<unreadable>` (a frame pointer could not
/// be read: the process changed or corrupted it).
pub(super) fn marker(flags: u32) -> Option<Frame> {
    let function = if flags & stack_flags::TRUNCATED != 0 {
        "<truncated>"
    } else if flags & stack_flags::UNREADABLE_FRAME != 0 {
        UNREADABLE
    } else {
        return None;
    };
    Some(Frame {
        function: function.to_owned(),
        file: String::new(),
        line: 0,
    })
}
