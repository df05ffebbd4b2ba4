//! Recognises a ResNet from a checkpoint's tensor names and shapes, so the same functional
//! forward pass can run the original, the decoded and the predictor-driven network.
//!
//! Supported: CIFAR-style ResNets (3x3 stem, no max pool; shortcuts as `downsample` 1x1 conv + BN
//! or parameter-free zero padding, "option A") and torchvision ResNets (7x7 stride-2 stem, 3x3 max
//! pool; basic blocks or bottlenecks). Any depth, width, input channels and classes.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

/// BatchNorm epsilon of PyTorch's default `BatchNorm2d`.
pub const BN_EPS: f32 = 1e-5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv {
    pub weight: String,
    pub stride: usize,
    pub padding: usize,
    pub bias: Option<String>,
}

/// A BatchNorm2d by prefix: `{prefix}.weight`, `.bias`, `.running_mean`, `.running_var`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Norm {
    pub prefix: String,
}

impl Norm {
    pub fn tensor(&self, field: &str) -> String {
        format!("{}.{field}", self.prefix)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortcut {
    Identity,
    /// `downsample.0` (1x1 conv, stride) then `downsample.1` (BN).
    Projection {
        conv: Conv,
        norm: Norm,
    },
    /// Option A: take every `stride`-th pixel and zero-pad channels (`before`, `after`).
    ZeroPad {
        stride: usize,
        before: usize,
        after: usize,
    },
}

/// A residual block: conv-BN pairs with ReLU between them, the shortcut added after the last BN,
/// then ReLU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub layers: Vec<(Conv, Norm)>,
    pub shortcut: Shortcut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Cifar,
    Torchvision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub family: Family,
    pub in_channels: usize,
    pub num_classes: usize,
    pub stem: (Conv, Norm),
    pub max_pool: bool,
    pub blocks: Vec<Block>,
    pub fc_weight: String,
    pub fc_bias: Option<String>,
    pub features: usize,
}

impl Network {
    /// A short description, e.g. "CIFAR ResNet, 9 basic blocks, 1 -> 10 classes".
    pub fn describe(&self) -> String {
        let kind = if self.blocks.first().is_some_and(|b| b.layers.len() == 3) {
            "bottleneck"
        } else {
            "basic"
        };
        format!(
            "{} ResNet, {} {kind} blocks, {} input channels, {} classes",
            match self.family {
                Family::Cifar => "CIFAR-style",
                Family::Torchvision => "torchvision",
            },
            self.blocks.len(),
            self.in_channels,
            self.num_classes
        )
    }

    /// Every convolution weight the network uses, in forward order.
    pub fn conv_weights(&self) -> Vec<&str> {
        self.conv_norms()
            .into_iter()
            .map(|(c, _)| c.weight.as_str())
            .collect()
    }

    /// Every convolution with the BatchNorm that follows it, in forward order.
    pub fn conv_norms(&self) -> Vec<(&Conv, &Norm)> {
        let mut v = vec![(&self.stem.0, &self.stem.1)];
        for b in &self.blocks {
            v.extend(b.layers.iter().map(|(c, n)| (c, n)));
            if let Shortcut::Projection { conv, norm } = &b.shortcut {
                v.push((conv, norm));
            }
        }
        v
    }
}

struct Scan<'a> {
    shapes: &'a BTreeMap<String, Vec<usize>>,
    used: BTreeSet<String>,
}

impl Scan<'_> {
    fn shape(&self, name: &str) -> Option<&Vec<usize>> {
        self.shapes.get(name)
    }

    fn take(&mut self, name: &str) -> Result<&Vec<usize>> {
        let s = self
            .shapes
            .get(name)
            .ok_or_else(|| Error::UnsupportedArchitecture(format!("missing tensor {name}")))?;
        self.used.insert(name.to_string());
        Ok(s)
    }

    /// A conv weight `[out, in, k, k]`; returns (out, in, k).
    fn conv(&mut self, name: &str, stride: usize) -> Result<(Conv, [usize; 3])> {
        let weight = format!("{name}.weight");
        let s = self.take(&weight)?.clone();
        if s.len() != 4 || s[2] != s[3] || s[2] % 2 == 0 {
            return Err(Error::UnsupportedArchitecture(format!(
                "{weight} has shape {s:?}, expected [out, in, k, k] with odd k"
            )));
        }
        let bias_name = format!("{name}.bias");
        let bias = if self.shape(&bias_name).is_some() {
            if self.take(&bias_name)? != &vec![s[0]] {
                return Err(Error::UnsupportedArchitecture(format!("{bias_name} shape")));
            }
            Some(bias_name)
        } else {
            None
        };
        Ok((
            Conv {
                weight,
                stride,
                padding: s[2] / 2,
                bias,
            },
            [s[0], s[1], s[2]],
        ))
    }

    fn norm(&mut self, prefix: &str, channels: usize) -> Result<Norm> {
        for field in ["weight", "bias", "running_mean", "running_var"] {
            let name = format!("{prefix}.{field}");
            if self.take(&name)? != &vec![channels] {
                return Err(Error::UnsupportedArchitecture(format!(
                    "{name} does not have {channels} entries"
                )));
            }
        }
        let nbt = format!("{prefix}.num_batches_tracked");
        if self.shape(&nbt).is_some() {
            self.used.insert(nbt);
        }
        Ok(Norm {
            prefix: prefix.to_string(),
        })
    }
}

fn mismatch(what: String) -> Error {
    Error::UnsupportedArchitecture(what)
}

/// Maps tensor names and shapes (a PyTorch `state_dict`) to a network.
pub fn recognize(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Network> {
    let mut scan = Scan {
        shapes,
        used: BTreeSet::new(),
    };
    if scan.shape("conv1.weight").is_none() || scan.shape("fc.weight").is_none() {
        return Err(mismatch(
            "not a ResNet state_dict: conv1.weight and fc.weight are required".into(),
        ));
    }
    let (mut stem, [mut channels, in_channels, k]) = scan.conv("conv1", 1)?;
    let family = match k {
        3 => Family::Cifar,
        7 => {
            stem.stride = 2;
            Family::Torchvision
        }
        _ => {
            return Err(mismatch(format!(
                "stem kernel {k}x{k} (expected 3x3 or 7x7)"
            )));
        }
    };
    let stem_norm = scan.norm("bn1", channels)?;
    let mut blocks = Vec::new();
    let mut stage = 1;
    while scan
        .shape(&format!("layer{stage}.0.conv1.weight"))
        .is_some()
    {
        let mut i = 0;
        while scan
            .shape(&format!("layer{stage}.{i}.conv1.weight"))
            .is_some()
        {
            let p = format!("layer{stage}.{i}");
            let stride = if i == 0 && stage > 1 { 2 } else { 1 };
            let bottleneck = scan.shape(&format!("{p}.conv3.weight")).is_some();
            let names: &[&str] = if bottleneck {
                &["conv1", "conv2", "conv3"]
            } else {
                &["conv1", "conv2"]
            };
            let mut layers = Vec::new();
            let mut c_in = channels;
            for (j, conv) in names.iter().enumerate() {
                // The stride sits on the 3x3 conv: conv1 in basic blocks, conv2 in bottlenecks.
                let s = if (bottleneck && j == 1) || (!bottleneck && j == 0) {
                    stride
                } else {
                    1
                };
                let (c, [out, inp, _]) = scan.conv(&format!("{p}.{conv}"), s)?;
                if inp != c_in {
                    return Err(mismatch(format!(
                        "{p}.{conv} takes {inp} channels, the previous layer gives {c_in}"
                    )));
                }
                let n = scan.norm(&format!("{p}.bn{}", j + 1), out)?;
                layers.push((c, n));
                c_in = out;
            }
            let out = c_in;
            let shortcut = if scan.shape(&format!("{p}.downsample.0.weight")).is_some() {
                let (mut conv, [o, inp, kk]) = scan.conv(&format!("{p}.downsample.0"), stride)?;
                conv.padding = 0;
                if o != out || inp != channels || kk != 1 {
                    return Err(mismatch(format!("{p}.downsample.0 shape")));
                }
                Shortcut::Projection {
                    conv,
                    norm: scan.norm(&format!("{p}.downsample.1"), out)?,
                }
            } else if out != channels || stride != 1 {
                if family != Family::Cifar || out < channels {
                    return Err(mismatch(format!(
                        "{p} changes shape but has no downsample tensors"
                    )));
                }
                let pad = out - channels;
                Shortcut::ZeroPad {
                    stride,
                    before: pad / 2,
                    after: pad - pad / 2,
                }
            } else {
                Shortcut::Identity
            };
            blocks.push(Block { layers, shortcut });
            channels = out;
            i += 1;
        }
        stage += 1;
    }
    if blocks.is_empty() {
        return Err(mismatch(
            "no residual blocks (layer1.0.conv1.weight)".into(),
        ));
    }
    let fc = scan.take("fc.weight")?.clone();
    if fc.len() != 2 || fc[1] != channels {
        return Err(mismatch(format!(
            "fc.weight has shape {fc:?}, expected [classes, {channels}]"
        )));
    }
    let fc_bias = if scan.shape("fc.bias").is_some() {
        if scan.take("fc.bias")? != &vec![fc[0]] {
            return Err(mismatch("fc.bias shape".into()));
        }
        Some("fc.bias".to_string())
    } else {
        None
    };
    let unknown: Vec<&str> = shapes
        .keys()
        .filter(|k| !scan.used.contains(*k))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let shown = unknown
            .iter()
            .take(8)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        return Err(mismatch(format!(
            "{} tensors not understood as part of a ResNet: {shown}{}",
            unknown.len(),
            if unknown.len() > 8 { ", ..." } else { "" }
        )));
    }
    Ok(Network {
        family,
        in_channels,
        num_classes: fc[0],
        stem: (stem, stem_norm),
        max_pool: family == Family::Torchvision,
        blocks,
        fc_weight: "fc.weight".into(),
        fc_bias,
        features: channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bn(m: &mut BTreeMap<String, Vec<usize>>, p: &str, c: usize) {
        for f in ["weight", "bias", "running_mean", "running_var"] {
            m.insert(format!("{p}.{f}"), vec![c]);
        }
        m.insert(format!("{p}.num_batches_tracked"), vec![]);
    }

    /// A CIFAR ResNet with `n` basic blocks per stage; `option_a` drops the downsample tensors.
    fn cifar(n: usize, option_a: bool) -> BTreeMap<String, Vec<usize>> {
        let mut m = BTreeMap::new();
        m.insert("conv1.weight".into(), vec![16, 3, 3, 3]);
        bn(&mut m, "bn1", 16);
        let mut c = 16;
        for (s, w) in [(1, 16), (2, 32), (3, 64)] {
            for i in 0..n {
                let p = format!("layer{s}.{i}");
                m.insert(format!("{p}.conv1.weight"), vec![w, c, 3, 3]);
                bn(&mut m, &format!("{p}.bn1"), w);
                m.insert(format!("{p}.conv2.weight"), vec![w, w, 3, 3]);
                bn(&mut m, &format!("{p}.bn2"), w);
                if c != w && !option_a {
                    m.insert(format!("{p}.downsample.0.weight"), vec![w, c, 1, 1]);
                    bn(&mut m, &format!("{p}.downsample.1"), w);
                }
                c = w;
            }
        }
        m.insert("fc.weight".into(), vec![100, 64]);
        m.insert("fc.bias".into(), vec![100]);
        m
    }

    #[test]
    fn cifar_resnet_with_projection_shortcuts() {
        let net = recognize(&cifar(3, false)).unwrap();
        assert_eq!(net.family, Family::Cifar);
        assert_eq!(net.blocks.len(), 9);
        assert_eq!((net.in_channels, net.num_classes), (3, 100));
        assert!(matches!(
            net.blocks[3].shortcut,
            Shortcut::Projection { .. }
        ));
        assert_eq!(net.blocks[3].layers[0].0.stride, 2);
        assert_eq!(net.conv_weights().len(), 19 + 2);
    }

    #[test]
    fn cifar_resnet_option_a() {
        let net = recognize(&cifar(2, true)).unwrap();
        assert_eq!(
            net.blocks[2].shortcut,
            Shortcut::ZeroPad {
                stride: 2,
                before: 8,
                after: 8
            }
        );
    }

    #[test]
    fn torchvision_bottleneck() {
        let mut m = BTreeMap::new();
        m.insert("conv1.weight".into(), vec![64, 3, 7, 7]);
        bn(&mut m, "bn1", 64);
        let mut c = 64;
        for (s, w) in [(1, 64), (2, 128)] {
            for i in 0..2 {
                let p = format!("layer{s}.{i}");
                m.insert(format!("{p}.conv1.weight"), vec![w, c, 1, 1]);
                bn(&mut m, &format!("{p}.bn1"), w);
                m.insert(format!("{p}.conv2.weight"), vec![w, w, 3, 3]);
                bn(&mut m, &format!("{p}.bn2"), w);
                m.insert(format!("{p}.conv3.weight"), vec![4 * w, w, 1, 1]);
                bn(&mut m, &format!("{p}.bn3"), 4 * w);
                if i == 0 {
                    m.insert(format!("{p}.downsample.0.weight"), vec![4 * w, c, 1, 1]);
                    bn(&mut m, &format!("{p}.downsample.1"), 4 * w);
                }
                c = 4 * w;
            }
        }
        m.insert("fc.weight".into(), vec![1000, 512]);
        m.insert("fc.bias".into(), vec![1000]);
        let net = recognize(&m).unwrap();
        assert_eq!(net.family, Family::Torchvision);
        assert!(net.max_pool);
        assert_eq!(net.stem.0.stride, 2);
        assert_eq!(net.blocks[2].layers[1].0.stride, 2);
        assert_eq!(net.blocks[2].layers[0].0.stride, 1);
    }

    #[test]
    fn unknown_tensors_are_named() {
        let mut m = cifar(1, false);
        m.insert("head.extra.weight".into(), vec![3]);
        let e = recognize(&m).unwrap_err().to_string();
        assert!(e.contains("head.extra.weight"), "{e}");
        let mut m = BTreeMap::new();
        m.insert("encoder.weight".to_string(), vec![3, 3]);
        assert!(recognize(&m).is_err());
    }
}
