//! The GPU tracker's traffic with the host, all of it through page-locked memory: a copy from
//! pageable memory is synchronous (the driver stages it through a buffer of its own and
//! waits), page-locked memory lets the copy queue on the stream and return at once.
//!
//! - Frames go up through two staging slots, each grown when a larger frame comes: one holds
//!   the frame the current step reads, the other takes the next frame while that step runs
//!   (the tracking loop's one-frame lookahead, [`crate::tracker::Tracker::track_ahead`]), so
//!   the host's copy of a frame overlaps the GPU's work on the one before.
//! - A template update right after the search of the same frame crops the frame the search
//!   used: no host copy; one upload when the next frame's replaced it on the device, and
//!   that next frame's upload queued again behind the template step.
//! - The step's results (four corners, one logit) come back into one small landing buffer,
//!   waited for with one event: the only wait of a tracking step.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream, DevicePtr, DevicePtrMut, PinnedHostSlice};

use crate::error::{CudaContext as _, Error, Result};
use crate::gpu::DeviceBuffer;
use crate::tracker::frame::Frame;

/// Which frame a slot holds: its bytes' address and size. A frame staged ahead is known
/// again by these when its search comes (the caller's promise that it is the same,
/// unchanged frame: see [`crate::tracker::Tracker::track_ahead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameKey {
    addr: usize,
    len: usize,
    width: usize,
    height: usize,
}

impl FrameKey {
    pub fn of(frame: &Frame) -> FrameKey {
        FrameKey {
            addr: frame.data.as_ptr() as usize,
            len: frame.data.len(),
            width: frame.width,
            height: frame.height,
        }
    }
}

/// One staging slot: page-locked bytes (allocated on first use, grown for larger frames)
/// and the event after its last upload, which a host write into it waits for.
struct Slot {
    host: Option<PinnedHostSlice<u8>>,
    uploaded: CudaEvent,
}

/// The frame staged for the next search: its slot and key, and whether its upload to the
/// device frame is queued (and not overwritten by another upload since).
#[derive(Debug, Clone, Copy)]
struct Staged {
    slot: usize,
    key: FrameKey,
    on_device: bool,
}

/// The corners `(x_tl, y_tl, x_br, y_br)` as f64, then the logit as f32.
const CORNER_BYTES: usize = 4 * size_of::<f64>();
const LANDING_BYTES: usize = CORNER_BYTES + size_of::<f32>();

/// The page-locked staging slots and the landing buffer of one GPU network.
pub struct HostTraffic {
    stream: Arc<CudaStream>,
    slots: [Slot; 2],
    /// The slot the frame on the device came from last.
    current: usize,
    staged: Option<Staged>,
    /// The slot holding the frame of the last search, and that frame, until a slot is
    /// written again.
    searched: Option<(usize, FrameKey)>,
    landing: PinnedHostSlice<u8>,
    landed: CudaEvent,
}

impl HostTraffic {
    pub fn new(stream: &Arc<CudaStream>) -> Result<HostTraffic> {
        let ctx = stream.context();
        let event = || {
            ctx.new_event(None)
                .cuda(|| "creating a host-copy event".into())
        };
        // Not write-combined (cudarc's default): the host reads the landing buffer, and
        // reading write-combined memory is uncached.
        // SAFETY: the bytes are written by a copy before they are read (`results`).
        let landing = unsafe { ctx.alloc_pinned_with_flags::<u8>(LANDING_BYTES, 0) }
            .cuda(|| "allocating the page-locked landing buffer".into())?;
        Ok(HostTraffic {
            stream: stream.clone(),
            slots: [
                Slot {
                    host: None,
                    uploaded: event()?,
                },
                Slot {
                    host: None,
                    uploaded: event()?,
                },
            ],
            current: 0,
            staged: None,
            searched: None,
            landing,
            landed: event()?,
        })
    }

    /// Copies `data` into slot `i`, once the slot's last upload is done.
    fn write(&mut self, i: usize, data: &[u8]) -> Result<()> {
        if self.searched.is_some_and(|(slot, _)| slot == i) {
            self.searched = None;
        }
        let slot = &mut self.slots[i];
        slot.uploaded
            .synchronize()
            .cuda(|| "waiting for a frame's upload".into())?;
        if slot.host.as_ref().is_none_or(|h| h.len() < data.len()) {
            slot.host = None; // free the smaller one first
            // Write-combined: the host only writes it, and the copy to the device reads it
            // faster. SAFETY: the bytes are written below before any upload reads them.
            let grown = unsafe { self.stream.context().alloc_pinned::<u8>(data.len()) }
                .cuda(|| format!("allocating {} page-locked bytes for frames", data.len()))?;
            slot.host = Some(grown);
        }
        let host = slot.host.as_mut().expect("allocated above");
        host.as_mut_slice()
            .cuda(|| "writing a frame into page-locked memory".into())?[..data.len()]
            .copy_from_slice(data);
        Ok(())
    }

    /// Queues the upload of slot `i`'s first `len` bytes into `dst` on the stream.
    fn upload(&mut self, i: usize, len: usize, dst: &mut DeviceBuffer<u8>) -> Result<()> {
        let slot = &mut self.slots[i];
        let host = slot
            .host
            .as_ref()
            .filter(|h| h.len() >= len && dst.len() >= len)
            .ok_or_else(|| {
                Error::invalid(
                    "frame upload",
                    format!(
                        "{len} bytes asked for, the staging slot or the device frame is smaller"
                    ),
                )
            })?;
        let src = &host.as_slice().cuda(|| "reading a staging slot".into())?[..len];
        let (ptr, _sync) = dst.device_ptr_mut(&self.stream);
        // SAFETY: `src` is page-locked memory owned by `self`, not written again before
        // `uploaded` (recorded next) completes (`write` waits for it), nor freed before the
        // stream is done (`Drop`); `ptr` addresses at least `len` bytes of a live buffer.
        unsafe { cudarc::driver::result::memcpy_htod_async(ptr, src, self.stream.cu_stream()) }
            .cuda(|| format!("uploading a {len}-byte frame"))?;
        slot.uploaded
            .record(&self.stream)
            .cuda(|| "recording a frame's upload".into())?;
        self.current = i;
        Ok(())
    }

    /// The slot that holds neither the staged frame nor, when possible, the current one.
    fn free_slot(&self) -> usize {
        match self.staged {
            Some(st) => 1 - st.slot,
            None => 1 - self.current,
        }
    }

    /// Uploads `data` into `dst` through a staging slot (not the staged frame's).
    pub fn put(&mut self, data: &[u8], dst: &mut DeviceBuffer<u8>) -> Result<()> {
        let i = self.free_slot();
        self.write(i, data)?;
        self.upload(i, data.len(), dst)?;
        if let Some(st) = self.staged.as_mut() {
            st.on_device = false;
        }
        Ok(())
    }

    /// Stages `next` for the next search: into the slot the current frame does not use,
    /// and, with `dst` (the device frame, when it has `next`'s size), its upload queued
    /// behind the work queued so far.
    pub fn stage(&mut self, next: &Frame, dst: Option<&mut DeviceBuffer<u8>>) -> Result<()> {
        self.staged = None;
        let i = 1 - self.current;
        self.write(i, &next.data)?;
        let on_device = match dst {
            Some(d) => {
                self.upload(i, next.data.len(), d)?;
                true
            }
            None => false,
        };
        self.staged = Some(Staged {
            slot: i,
            key: FrameKey::of(next),
            on_device,
        });
        Ok(())
    }

    /// The frame of a search into `dst`: the staged one when `frame` is it (uploaded now
    /// unless already queued), else copied as [`HostTraffic::put`] does. The staged frame
    /// is spent either way.
    pub fn search_frame(&mut self, frame: &Frame, dst: &mut DeviceBuffer<u8>) -> Result<()> {
        self.searched = None;
        match self.staged.take() {
            Some(st) if st.key == FrameKey::of(frame) => {
                if st.on_device {
                    self.current = st.slot;
                } else {
                    self.upload(st.slot, frame.data.len(), dst)?;
                }
            }
            _ => self.put(&frame.data, dst)?,
        }
        self.searched = Some((self.current, FrameKey::of(frame)));
        Ok(())
    }

    /// Puts the frame of the last search back into `dst` (of its size) when `frame` is it,
    /// from the slot that still holds it: nothing to do when the device frame still is it,
    /// one upload when the staged frame's upload replaced it. False when no slot holds
    /// `frame` (the caller uploads it).
    pub fn restore_searched(&mut self, frame: &Frame, dst: &mut DeviceBuffer<u8>) -> Result<bool> {
        let Some((slot, key)) = self.searched else {
            return Ok(false);
        };
        if key != FrameKey::of(frame) {
            return Ok(false);
        }
        if self.current != slot {
            self.upload(slot, key.len, dst)?;
            if let Some(st) = self.staged.as_mut() {
                st.on_device = false;
            }
        }
        Ok(true)
    }

    /// Queues the staged frame's upload into `dst` (the device frame, `size` its height
    /// and width) again when another upload replaced it and it has that size.
    pub fn restage(&mut self, size: (usize, usize), dst: &mut DeviceBuffer<u8>) -> Result<()> {
        if let Some(st) = self.staged
            && !st.on_device
            && (st.key.height, st.key.width) == size
        {
            self.upload(st.slot, st.key.len, dst)?;
            self.staged = Some(Staged {
                on_device: true,
                ..st
            });
        }
        Ok(())
    }

    /// Queues the copies of the corners and the logit into the landing buffer, and the
    /// event [`HostTraffic::results`] waits for.
    pub fn fetch(&mut self, corners: &DeviceBuffer<f64>, logit: &DeviceBuffer<f32>) -> Result<()> {
        if corners.len() < 4 || logit.is_empty() {
            return Err(Error::invalid(
                "tracker results",
                "4 corners and 1 logit expected on the device",
            ));
        }
        let s = self.stream.clone();
        let landing = self
            .landing
            .as_mut_slice()
            .cuda(|| "the landing buffer".into())?;
        let (to_corners, to_logit) = landing.split_at_mut(CORNER_BYTES);
        let (c, _c) = corners.device_ptr(&s);
        let (l, _l) = logit.device_ptr(&s);
        // SAFETY: the landing buffer is page-locked memory owned by `self`, read only after
        // `landed` (recorded next) completes, and not freed before the stream is done
        // (`Drop`); the sources hold at least the bytes copied (checked above).
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(to_corners, c, s.cu_stream())
                .cuda(|| "reading back the corners".into())?;
            cudarc::driver::result::memcpy_dtoh_async(
                &mut to_logit[..size_of::<f32>()],
                l,
                s.cu_stream(),
            )
            .cuda(|| "reading back the logit".into())?;
        }
        self.landed
            .record(&s)
            .cuda(|| "recording the results' copy".into())
    }

    /// Waits for the copies [`HostTraffic::fetch`] queued: the corners and the logit.
    pub fn results(&self) -> Result<([f64; 4], f32)> {
        self.landed
            .synchronize()
            .cuda(|| "waiting for the tracking step".into())?;
        let b = self
            .landing
            .as_slice()
            .cuda(|| "the landing buffer".into())?;
        let f64_at = |i: usize| {
            let at = i * size_of::<f64>();
            f64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
        };
        let logit = f32::from_ne_bytes(
            b[CORNER_BYTES..CORNER_BYTES + 4]
                .try_into()
                .expect("4 bytes"),
        );
        Ok(([f64_at(0), f64_at(1), f64_at(2), f64_at(3)], logit))
    }
}

impl Drop for HostTraffic {
    /// Copies still queued read or write the page-locked memory about to be freed.
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
    }
}
