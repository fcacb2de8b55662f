//! bitsandbytes' block-wise 8-bit quantisation with its signed dynamic code
//! (`create_dynamic_map(signed=True)`), used by QLoRA's double quantisation of the NF4 absmax
//! constants: `quantize_blockwise(absmax - mean(absmax), blocksize=256)`.
//!
//! Each value is divided by its block's absmax and takes the index of the nearest code value,
//! ties to the lower index (bitsandbytes' CPU kernel: binary search, then a strict
//! `dist_right < dist_left` test).

/// The signed dynamic 8-bit code, exact f32 bit patterns (sorted ascending).
const CODE_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

pub fn code() -> [f32; 256] {
    CODE_BITS.map(f32::from_bits)
}

/// A block-wise 8-bit quantised vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Blockwise8 {
    pub q: Vec<u8>,
    /// One f32 per block.
    pub absmax: Vec<f32>,
    /// Subtracted before quantising (the mean), added back after.
    pub offset: f32,
    pub block_size: usize,
}

impl Blockwise8 {
    /// Number of quantised values.
    pub fn absmax_len(&self) -> usize {
        self.q.len()
    }

    pub fn blocks(&self) -> usize {
        self.absmax.len()
    }
}

/// QLoRA's double quantisation: subtract the mean, then quantise block-wise.
pub fn quantize_with_offset(values: &[f32], block_size: usize) -> Blockwise8 {
    // f64 accumulation: the correctly rounded mean, which is what torch's f32 `mean` gives on
    // these short vectors up to an ulp.
    let offset = if values.is_empty() {
        0.0
    } else {
        (values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64) as f32
    };
    let centred: Vec<f32> = values.iter().map(|v| v - offset).collect();
    let (q, absmax) = quantize_blockwise(&centred, block_size, &code());
    Blockwise8 {
        q,
        absmax,
        offset,
        block_size,
    }
}

/// Quantises `values` in blocks of `block_size` with the sorted `code`.
pub fn quantize_blockwise(
    values: &[f32],
    block_size: usize,
    code: &[f32; 256],
) -> (Vec<u8>, Vec<f32>) {
    let mut q = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block_size));
    for chunk in values.chunks(block_size) {
        let am = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        for &v in chunk {
            // An all-zero block gives 0/0 = NaN, which lands on index 0 as in bitsandbytes;
            // it dequantises to 0 either way.
            q.push(nearest(code, v / am));
        }
    }
    (q, absmax)
}

fn nearest(code: &[f32; 256], x: f32) -> u8 {
    // The last code value <= x (0 when x is below them all), then its right neighbour if that
    // is strictly closer.
    let left = code.partition_point(|&c| c <= x).saturating_sub(1);
    let idx = if left < 255 && (x - code[left + 1]).abs() < (x - code[left]).abs() {
        left + 1
    } else {
        left
    };
    idx as u8
}

/// `code[q] · absmax[block] + offset`, in f32 as bitsandbytes computes it.
pub fn dequantize(
    q: &[u8],
    absmax: &[f32],
    code: &[f32; 256],
    block_size: usize,
    offset: f32,
) -> Vec<f32> {
    q.iter()
        .enumerate()
        .map(|(i, &k)| code[k as usize] * absmax[i / block_size] + offset)
        .collect()
}
