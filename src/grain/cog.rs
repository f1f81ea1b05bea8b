//! The format enumerations of BBC's Cog2 library that grain headers carry.
//!
//! They are newtypes over the raw `u32` rather than Rust enums because GSF files and JSON
//! may carry values this code does not know: such a value must survive a round trip
//! unchanged. Known values are associated constants named as in `mediagrains.cogenums`.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! cog_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr,)* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u32);

        #[allow(non_upper_case_globals)]
        impl $name {
            $(
                $(#[$vmeta])*
                pub const $variant: $name = $name($value);
            )*

            /// The `mediagrains.cogenums` name of this value, `None` when it is not a known one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($variant)),)*
                    _ => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => write!(f, "{}::{}", stringify!($name), name),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "{:#x}", self.0),
                }
            }
        }

        impl From<u32> for $name {
            fn from(value: u32) -> Self {
                $name(value)
            }
        }

        impl From<$name> for u32 {
            fn from(value: $name) -> u32 {
                value.0
            }
        }
    };
}

cog_enum! {
    /// The pixel format of a raw or coded video frame (`CogFrameFormat`).
    CogFrameFormat {
        /// Motion JPEG.
        MJPEG = 0x200,
        /// Avid DNxHD.
        DNxHD = 0x201,
        /// MPEG-2 video.
        MPEG2 = 0x202,
        /// AVC-Intra.
        AVCI = 0x203,
        /// H.264.
        H264 = 0x204,
        /// DV.
        DV = 0x205,
        /// D10.
        D10 = 0x206,
        /// VC-2.
        VC2 = 0x207,
        /// VP8.
        VP8 = 0x208,
        /// H.265.
        H265 = 0x209,
        /// 1-bit alpha in 8-bit samples.
        ALPHA_U8_1BIT = 0x1080,
        /// Planar 8-bit 4:4:4 YUV.
        U8_444 = 0x2000,
        /// Planar 8-bit 4:2:2 YUV.
        U8_422 = 0x2001,
        /// Planar 8-bit 4:2:0 YUV.
        U8_420 = 0x2003,
        /// Planar 8-bit RGB.
        U8_444_RGB = 0x2010,
        /// 8-bit alpha plane.
        ALPHA_U8 = 0x2080,
        /// Packed 8-bit YUYV.
        YUYV = 0x2100,
        /// Packed 8-bit UYVY.
        UYVY = 0x2101,
        /// Packed 8-bit AYUV.
        AYUV = 0x2102,
        /// Packed 8-bit RGB.
        RGB = 0x2104,
        /// Packed 8-bit RGBx.
        RGBx = 0x2110,
        /// Packed 8-bit xRGB.
        xRGB = 0x2111,
        /// Packed 8-bit BGRx.
        BGRx = 0x2112,
        /// Packed 8-bit xBGR.
        xBGR = 0x2113,
        /// Packed 8-bit RGBA.
        RGBA = 0x2114,
        /// Packed 8-bit ARGB.
        ARGB = 0x2115,
        /// Packed 8-bit BGRA.
        BGRA = 0x2116,
        /// Packed 8-bit ABGR.
        ABGR = 0x2117,
        /// Planar 10-bit 4:4:4 YUV in 16-bit samples.
        S16_444_10BIT = 0x2804,
        /// Planar 10-bit RGB in 16-bit samples.
        S16_444_10BIT_RGB = 0x2814,
        /// Planar 10-bit 4:2:2 YUV in 16-bit samples.
        S16_422_10BIT = 0x2805,
        /// Planar 10-bit 4:2:0 YUV in 16-bit samples.
        S16_420_10BIT = 0x2807,
        /// 10-bit alpha plane in 16-bit samples.
        ALPHA_S16_10BIT = 0x2884,
        /// Packed 10-bit 4:2:2 v210.
        v210 = 0x2906,
        /// Planar 12-bit 4:4:4 YUV in 16-bit samples.
        S16_444_12BIT = 0x3004,
        /// Planar 12-bit RGB in 16-bit samples.
        S16_444_12BIT_RGB = 0x3014,
        /// Planar 12-bit 4:2:2 YUV in 16-bit samples.
        S16_422_12BIT = 0x3005,
        /// Planar 12-bit 4:2:0 YUV in 16-bit samples.
        S16_420_12BIT = 0x3007,
        /// 12-bit alpha plane in 16-bit samples.
        ALPHA_S16_12BIT = 0x3084,
        /// Planar 16-bit 4:4:4 YUV.
        S16_444 = 0x4004,
        /// Planar 16-bit RGB.
        S16_444_RGB = 0x4014,
        /// Planar 16-bit 4:2:2 YUV.
        S16_422 = 0x4005,
        /// Planar 16-bit 4:2:0 YUV.
        S16_420 = 0x4007,
        /// 16-bit alpha plane.
        ALPHA_S16 = 0x4084,
        /// Packed 16-bit 4:2:2 v216.
        v216 = 0x4105,
        /// Planar 32-bit 4:4:4 YUV.
        S32_444 = 0x8008,
        /// Planar 32-bit RGB.
        S32_444_RGB = 0x8018,
        /// Planar 32-bit 4:2:2 YUV.
        S32_422 = 0x8009,
        /// Planar 32-bit 4:2:0 YUV.
        S32_420 = 0x800b,
        /// 32-bit alpha plane.
        ALPHA_S32 = 0x8088,
        /// Format not known to the writer.
        UNKNOWN = 0xffff_fffe,
        /// Explicitly invalid.
        INVALID = 0xffff_ffff,
    }
}

impl CogFrameFormat {
    /// Whether samples are packed together in one plane (`COG_FRAME_IS_PACKED`).
    pub fn is_packed(self) -> bool {
        (self.0 >> 8) & 0x1 != 0
    }

    /// Whether this is a compressed (coded) format (`COG_FRAME_IS_COMPRESSED`).
    pub fn is_compressed(self) -> bool {
        (self.0 >> 9) & 0x1 != 0
    }

    /// Whether samples are in separate planes (`COG_FRAME_IS_PLANAR`).
    pub fn is_planar(self) -> bool {
        (self.0 >> 8) & 0x3 == 0
    }
}

cog_enum! {
    /// How the lines of a frame are arranged in time (`CogFrameLayout`).
    CogFrameLayout {
        /// Progressive.
        FULL_FRAME = 0x0,
        /// Two fields, one after the other.
        SEPARATE_FIELDS = 0x1,
        /// A single field.
        SINGLE_FIELD = 0x2,
        /// Interleaved fields.
        MIXED_FIELDS = 0x3,
        /// Segmented frame (PsF).
        SEGMENTED_FRAME = 0x4,
        /// Layout not known to the writer.
        UNKNOWN = 0xffff_fffe,
    }
}

cog_enum! {
    /// The sample format of raw or coded audio (`CogAudioFormat`).
    CogAudioFormat {
        /// 16-bit samples, one plane per channel.
        S16_PLANES = 0x0,
        /// 16-bit samples in channel pairs.
        S16_PAIRS = 0x1,
        /// 16-bit interleaved samples.
        S16_INTERLEAVED = 0x2,
        /// 24-bit samples, one plane per channel.
        S24_PLANES = 0x4,
        /// 24-bit samples in channel pairs.
        S24_PAIRS = 0x5,
        /// 24-bit interleaved samples.
        S24_INTERLEAVED = 0x6,
        /// 32-bit samples, one plane per channel.
        S32_PLANES = 0x8,
        /// 32-bit samples in channel pairs.
        S32_PAIRS = 0x9,
        /// 32-bit interleaved samples.
        S32_INTERLEAVED = 0xa,
        /// 64-bit integer samples (not valid).
        S64_INVALID = 0xc,
        /// Float samples, one plane per channel.
        FLOAT_PLANES = 0x18,
        /// Float samples in channel pairs.
        FLOAT_PAIRS = 0x19,
        /// Interleaved float samples.
        FLOAT_INTERLEAVED = 0x1a,
        /// Double samples, one plane per channel.
        DOUBLE_PLANES = 0x2c,
        /// Double samples in channel pairs.
        DOUBLE_PAIRS = 0x2d,
        /// Interleaved double samples.
        DOUBLE_INTERLEAVED = 0x2e,
        /// MPEG-1 audio.
        MP1 = 0x200,
        /// AAC.
        AAC = 0x201,
        /// Opus.
        OPUS = 0x202,
        /// Format not known to the writer.
        UNKNOWN = 0xffff_fffe,
        /// Explicitly invalid.
        INVALID = 0xffff_ffff,
    }
}

impl CogAudioFormat {
    /// Whether this is a compressed (coded) format (`COG_AUDIO_IS_COMPRESSED`).
    pub fn is_compressed(self) -> bool {
        self.0 & 0x200 == 0x200
    }
}
