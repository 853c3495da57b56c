//! Districts: many byte streams concatenated in order into one Hilbert texture, streamed out
//! in `--max-side` parts as they fill, so memory stays bounded however big the whole is.

use crate::analysis::byte_facts;
use crate::backend::Backend;
use crate::error::Result;
use crate::format::brick::{self, BrickHeader};
use crate::format::parts::{self, PartEntry, PartsIndex};
use crate::format::rts_png::{self, PngCompression};
use crate::format::staged::StagedOutputs;
use crate::format::{brick_min_side, order_of_side, rts_min_side};
use crate::kernels::Layout;
use crate::source::elf::TextureLayout;
use serde_json::{json, Map};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Writes a district part by part while bytes are appended.
pub struct DistrictWriter<'a> {
    backend: &'a Backend,
    dir: PathBuf,
    name: String,
    description: String,
    max_side: u32,
    compression: PngCompression,
    buffer: Vec<u8>,
    part_size: usize,
    parts: Vec<PartEntry>,
    part_orders: Vec<u32>,
    whole: Sha256,
    total: u64,
    /// Bytes already written out in parts.
    flushed: u64,
    /// Output modes ([`crate::policy::output_mode`]): of the source being appended now, of the
    /// part being filled, and of everything so far (the index). A part is as private as the
    /// most private source it holds.
    source_mode: u32,
    part_mode: u32,
    overall_mode: u32,
    /// Where the bytes written are added up, if anywhere.
    tally: Option<crate::format::staged::WriteTally>,
    /// Whether each part is also written as a `.brick` (4 bytes a byte), not only as a
    /// `.rts.png`.
    bricks: bool,
}

/// A finished district.
pub struct District {
    /// `NAME.parts.json`: `foundry-gpu unfold` rebuilds the whole stream from it.
    pub index_path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub parts: Vec<PartEntry>,
    /// Where any byte range of the stream lands in the `.brick` parts (in the `.rts.png`
    /// parts of a district written without bricks).
    pub layout: TextureLayout,
    /// The most private output mode of any part: what the district's own index gets.
    pub mode: u32,
}

impl<'a> DistrictWriter<'a> {
    /// A district named `name` in `dir`; `description` goes into each part's PixelRTS text.
    pub fn new(
        backend: &'a Backend,
        dir: &Path,
        name: &str,
        description: &str,
        max_side: u32,
        compression: PngCompression,
    ) -> Self {
        let part_size = max_side as usize * max_side as usize;
        DistrictWriter {
            backend,
            dir: dir.to_path_buf(),
            name: name.into(),
            description: description.into(),
            max_side,
            compression,
            buffer: Vec::with_capacity(part_size.min(64 << 20)),
            part_size,
            parts: Vec::new(),
            part_orders: Vec::new(),
            whole: Sha256::new(),
            total: 0,
            flushed: 0,
            source_mode: 0o644,
            part_mode: 0o644,
            overall_mode: 0o644,
            tally: None,
            bricks: true,
        }
    }

    /// The bytes appended from now on come from a source whose outputs get `mode`.
    pub fn set_source_mode(&mut self, mode: u32) {
        self.source_mode = mode;
        self.part_mode &= mode;
        self.overall_mode &= mode;
    }

    /// Bytes appended so far: the offset the next append lands at.
    pub fn offset(&self) -> u64 {
        self.total
    }

    /// Appends `bytes`, writing out every part that fills.
    pub fn append(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.whole.update(bytes);
        self.total += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (self.part_size - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() == self.part_size {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let index = self.parts.len();
        let bytes = &self.buffer[..];
        let (brick_side, rts_side) = (
            brick_min_side(bytes.len() as u64),
            rts_min_side(bytes.len() as u64),
        );
        let backend = self.backend;
        let compression = self.compression;
        let bricks = self.bricks;
        let (facts, textures) = rayon::join(
            || byte_facts(bytes),
            || -> Result<_> {
                // Both textures read one staged input: on the GPU, one upload.
                let input = backend.stage(bytes);
                let brick = bricks
                    .then(|| input.fold(Layout::Brick, 0..bytes.len(), order_of_side(brick_side)))
                    .transpose()?;
                let rts = input.fold(Layout::Rts, 0..bytes.len(), order_of_side(rts_side))?;
                let image = rts_png::encode_texture(rts_side, &rts, compression)
                    .map_err(|e| crate::Error::io(&self.dir, "compress", e))?;
                Ok((brick, image))
            },
        );
        let (brick_texture, image) = textures?;
        let stem = parts::part_file_name(&self.name, index, index + 1, "");
        let stem = stem.trim_end_matches('.');
        let offset = self.flushed;
        let part_info =
            json!({"index": index, "offset": offset, "size": bytes.len(), "district": self.name});
        let mut staged = self.staged(self.part_mode);
        let brick_name = match &brick_texture {
            Some(texture) => {
                let brick_name = format!("{stem}.brick");
                let header = BrickHeader::new(
                    brick_side,
                    &facts,
                    brick::flags_for(&facts) | brick::flags::HAS_METADATA,
                );
                staged.write(&self.dir.join(&brick_name), |w| {
                    brick::write_brick(w, &header, texture)
                })?;
                let sidecar = json!({"version": "1", "name": stem, "part": part_info});
                staged.write(&brick::sidecar_path(&self.dir.join(&brick_name)), |w| {
                    w.write_all(rts_png::ascii_json(&sidecar).as_bytes())
                })?;
                Some(brick_name)
            }
            None => None,
        };
        let rts_name = format!("{stem}.rts.png");
        let mut extra = Map::new();
        extra.insert("part".into(), part_info);
        extra.insert("content".into(), json!("district"));
        let meta = rts_png::metadata(stem, &facts, rts_side, &self.description, extra);
        let text = rts_png::ascii_json(&meta);
        staged.write(&self.dir.join(&rts_name), |w| {
            rts_png::write_rts_png(w, &image, &text, None)
        })?;
        staged.commit()?;
        self.parts.push(PartEntry {
            index,
            offset,
            size: bytes.len() as u64,
            sha256: facts.sha256_hex(),
            brick: brick_name,
            rts_png: Some(rts_name),
        });
        self.part_orders.push(order_of_side(if self.bricks {
            brick_side
        } else {
            rts_side
        }));
        self.flushed += self.buffer.len() as u64;
        self.buffer.clear();
        self.part_mode = self.source_mode;
        Ok(())
    }

    /// Without `.brick` parts: the district is its `.rts.png` parts alone (what the map reads,
    /// and a quarter of the bytes), and [`District::layout`] places ranges on those.
    pub fn without_bricks(mut self) -> Self {
        self.bricks = false;
        self
    }

    /// The bytes the district writes are added to `tally` too.
    pub fn with_tally(mut self, tally: &crate::format::staged::WriteTally) -> Self {
        self.tally = Some(std::sync::Arc::clone(tally));
        self
    }

    /// A set of outputs of `mode`, counted in the tally.
    fn staged(&self, mode: u32) -> StagedOutputs {
        StagedOutputs::new()
            .with_mode(mode)
            .with_tally(self.tally.as_ref())
    }

    /// Writes the last part and the parts index.
    pub fn finish(mut self) -> Result<District> {
        if !self.buffer.is_empty() || self.parts.is_empty() {
            self.flush()?;
        }
        let sha256 = hex::encode(std::mem::take(&mut self.whole).finalize());
        let index = PartsIndex {
            format: parts::FORMAT.into(),
            version: 1,
            name: self.name.clone(),
            size: self.total,
            sha256: sha256.clone(),
            part_size: self.part_size as u64,
            max_side: self.max_side,
            parts: self.parts.clone(),
        };
        let index_path = self.dir.join(parts::index_file_name(&self.name));
        let mut staged = self.staged(self.overall_mode);
        let text = serde_json::to_string_pretty(&index).expect("index serialises");
        staged.write(&index_path, |w| w.write_all(text.as_bytes()))?;
        staged.commit()?;
        Ok(District {
            index_path,
            size: self.total,
            sha256,
            layout: TextureLayout {
                part_size: self.part_size as u64,
                part_orders: self.part_orders,
                bytes_per_pixel: if self.bricks { 1 } else { 4 },
            },
            parts: self.parts,
            mode: self.overall_mode,
        })
    }
}
