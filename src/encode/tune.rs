//! Tuned passthrough (`--passthrough tuned`, opt-in, lossy): phase 2 also trains each
//! BatchNorm's affine parameters and the FC layer, next to the predictor. They are stored in the
//! passthrough anyway, so tuning them costs no byte; the decoded checkpoint then differs from
//! the source there (recorded in the file's recipe, shown by `inspect`). Running statistics and
//! everything else stay byte-exact.
//!
//! The parametrisation is the folded forward pass's: a gain on each conv's folded BN scale
//! (starting at 1), a shift of its folded bias (starting at 0), deltas of the FC weight and bias
//! (starting at 0). [`crate::network::adjusted_tensors`] turns them into BN and FC tensors.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::arch::Network;
use crate::error::{Error, Result};
use crate::network::{FixedParams, HostModel, adjusted_tensors};

/// The trainable corrections of the passthrough, in [`Network::conv_norms`] order.
#[derive(Module, Debug)]
pub struct PassTune<B: Backend> {
    gains: Vec<Param<Tensor<B, 1>>>,
    shifts: Vec<Param<Tensor<B, 1>>>,
    fc_weight: Param<Tensor<B, 2>>,
    fc_bias: Vec<Param<Tensor<B, 1>>>,
}

/// Passthrough tensors changed by phase 2, as they will be stored: F32 values (already rounded
/// through binary16 when the passthrough is stored so), by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TunedPassthrough {
    pub tensors: BTreeMap<String, Vec<f32>>,
}

impl TunedPassthrough {
    /// `host` with these tensors in place of its own.
    pub fn apply(&self, host: &HostModel) -> HostModel {
        let mut h = host.clone();
        for (name, v) in &self.tensors {
            h.values.insert(name.clone(), v.clone());
        }
        h
    }
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .into_vec::<f32>()
        .map_err(|e| Error::Training(format!("{e:?}")))
}

impl<B: Backend> PassTune<B> {
    /// The identity correction for `net`.
    pub fn new(net: &Network, host: &HostModel, device: &B::Device) -> Self {
        let mut gains = Vec::new();
        let mut shifts = Vec::new();
        for (c, _) in net.conv_norms() {
            let c_out = host.shapes[&c.weight][0];
            gains.push(Param::from_tensor(Tensor::ones([c_out], device)));
            shifts.push(Param::from_tensor(Tensor::zeros([c_out], device)));
        }
        let fc_weight = Param::from_tensor(Tensor::zeros([net.features, net.num_classes], device));
        let fc_bias = net
            .fc_bias
            .iter()
            .map(|_| Param::from_tensor(Tensor::zeros([net.num_classes], device)))
            .collect();
        PassTune {
            gains,
            shifts,
            fc_weight,
            fc_bias,
        }
    }

    /// `fixed` with the corrections applied (see [`FixedParams::adjusted`]).
    pub fn apply(&self, net: &Network, fixed: &FixedParams<B>) -> FixedParams<B> {
        let convs: Vec<_> = net
            .conv_norms()
            .into_iter()
            .zip(self.gains.iter().zip(&self.shifts))
            .map(|((c, _), (g, s))| (c.weight.as_str(), g.val(), s.val()))
            .collect();
        fixed.adjusted(
            &convs,
            self.fc_weight.val(),
            self.fc_bias.first().map(Param::val),
        )
    }

    /// The BN and FC tensors these corrections make of `host`'s, rounded through binary16 when
    /// `f16` (the passthrough is stored so): exactly what the file will hold.
    pub fn stored(&self, net: &Network, host: &HostModel, f16: bool) -> Result<TunedPassthrough> {
        let mut convs = Vec::new();
        for (g, s) in self.gains.iter().zip(&self.shifts) {
            convs.push((to_vec(g.val())?, to_vec(s.val())?));
        }
        let fc_w = to_vec(self.fc_weight.val())?;
        let fc_b = match self.fc_bias.first() {
            Some(b) => Some(to_vec(b.val())?),
            None => None,
        };
        let mut tensors = BTreeMap::new();
        for (name, mut v) in adjusted_tensors(net, host, &convs, &fc_w, fc_b.as_deref())? {
            for x in &mut v {
                if !x.is_finite() {
                    return Err(Error::Training(format!(
                        "tuning the passthrough made {name} non-finite"
                    )));
                }
                if f16 {
                    let h = half::f16::from_f32(*x);
                    if !h.is_finite() {
                        return Err(Error::Training(format!(
                            "tuned {name} holds {x}, beyond binary16's range"
                        )));
                    }
                    *x = h.to_f32();
                }
            }
            tensors.insert(name, v);
        }
        Ok(TunedPassthrough { tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{forward, host_convs};
    use burn::tensor::Distribution;

    type B = burn::backend::Flex;

    /// The BN and FC tensors written for a correction compute, in the plain forward pass, what
    /// the adjusted folded parameters compute in training: the decoded checkpoint is the
    /// network phase 2 measured.
    #[test]
    fn stored_tensors_reproduce_the_adjusted_forward_pass() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/fmnist-resnet20.safetensors"
        ));
        let host = HostModel::load(path).unwrap();
        let net = host.network().unwrap();
        let device = Default::default();
        let mut tune = PassTune::<B>::new(&net, &host, &device);
        // A correction far from the identity.
        let random = |params: Vec<Param<Tensor<B, 1>>>, lo: f64, hi: f64| -> Vec<_> {
            params
                .into_iter()
                .map(|p| {
                    let n = p.val().dims()[0];
                    Param::from_tensor(Tensor::random([n], Distribution::Uniform(lo, hi), &device))
                })
                .collect()
        };
        tune.gains = random(tune.gains, 0.5, 1.5);
        tune.shifts = random(tune.shifts, -0.3, 0.3);
        let dims = tune.fc_weight.val().dims();
        tune.fc_weight = Param::from_tensor(Tensor::random(
            dims,
            Distribution::Uniform(-0.1, 0.1),
            &device,
        ));
        let fixed = FixedParams::<B>::new(&net, &host, &device).unwrap();
        let convs = host_convs::<B>(&net, &host, &device).unwrap();
        let x = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
        let trained = forward(&net, &tune.apply(&net, &fixed), &convs, x.clone());

        let stored = tune.stored(&net, &host, false).unwrap();
        // 21 BNs (weight, bias) + FC weight and bias.
        assert_eq!(stored.tensors.len(), 2 * 21 + 2);
        let rebuilt = stored.apply(&host);
        let plain = FixedParams::<B>::new(&net, &rebuilt, &device).unwrap();
        let decoded = forward(&net, &plain, &convs, x.clone());
        let a = to_vec(trained).unwrap();
        let b = to_vec(decoded).unwrap();
        let untuned = to_vec(forward(&net, &fixed, &convs, x)).unwrap();
        let diff = |p: &[f32], q: &[f32]| {
            p.iter()
                .zip(q)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        assert!(diff(&a, &b) < 1e-3, "max |diff| {}", diff(&a, &b));
        // The correction does change the network.
        assert!(diff(&a, &untuned) > 0.1);

        // Stored as binary16, every value is one.
        let halves = tune.stored(&net, &host, true).unwrap();
        for v in halves.tensors.values() {
            assert!(v.iter().all(|x| half::f16::from_f32(*x).to_f32() == *x));
        }
    }
}
