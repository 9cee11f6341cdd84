"""What moto's CloudFormation lacks for the clinic's stack: ElastiCache, names of RDS
groups, a bucket's versioning and public access block, and the zones of the stack's region.

Test tooling only: `hack/moto_server.py` imports this module before it starts moto's
server, and nothing of it reaches the operator or AWS. The stack the operator renders
(src/controller/deployment/template.rs) is right for AWS and is created in moto
unchanged; this module extends the emulator where it falls short, it never relaxes what
the template is checked against.

Written against moto 5.2.5 (`hack/install-moto.sh` pins it). There, CloudFormation has no
model for AWS::ElastiCache::SubnetGroup or AWS::ElastiCache::ReplicationGroup: it skips
both with a warning, and a stack whose outputs `Fn::GetAtt` the replication group's
endpoint is created, then answers every DescribeStacks with HTTP 500. The two models below
create, update and delete those resources through moto's own ElastiCache backend (so the
ElastiCache API of the same moto sees them), `Ref` gives the group's name or id, and
`Fn::GetAtt` gives `PrimaryEndPoint.Address`/`.Port`, `ReaderEndPoint.Address`/`.Port`
(cluster mode disabled) and `ConfigurationEndPoint.Address`/`.Port` (enabled). As
CloudFormation does, a group without `ReplicationGroupId` gets a lowercase id of at most
40 characters made from the stack name, the logical id and a random suffix.

moto 5.2.5's RDS DB subnet and parameter groups have no physical id in CloudFormation:
`Ref` to one (and so an output, and DescribeStackResources) gives the Python object's repr,
`<moto.rds.models.DBSubnetGroup object at 0x...>`. Here their `Ref` is their name, as in AWS.

moto 5.2.5 creates an AWS::S3::Bucket with its `BucketEncryption` and `Tags` only; here its
`VersioningConfiguration`, `PublicAccessBlockConfiguration` and `OwnershipControls` are
applied too, through moto's S3 backend, on create and on update. And moto 5.2.5 answers
GetBucketVersioning with the root element `GetBucketVersioningResponse` where S3 has
`VersioningConfiguration`: lenient clients read it, the Rust SDK refuses it. Here the root
is S3's.

moto 5.2.5 also answers `Fn::GetAZs ""` (the stack's region) with us-east-1's zones in
every region, so a new VPC's subnets of a stack in eu-west-1 land in `us-east-1a`, ...;
`Fn::GetAZs` here gives the zones of the region asked for, `""` meaning the stack's.

moto 5.2.5 stores the `KeyPolicy` of an AWS::KMS::Key made by CloudFormation as the
template's JSON object where its KMS API keeps a string, so DescribeKey of any such key
fails with HTTP 500 (`json.loads` of a dict). Here the policy is stored as a JSON string.

Nothing is needed for EFS: moto names a file system's creation token after the stack, the
logical id and a random suffix, so many clinic stacks share an account and region. Nor for
stack tags, which moto puts on EC2 resources only: no test reads them elsewhere.

moto's CloudFormation finds its models with `CloudFormationModel.__subclasses__()`, cached
on first use (`get_model_list`), so this module must be imported before the first request.
Everything of moto's it relies on is checked at import, and the import fails when anything
is missing or when moto has come to model these types itself: a moto upgrade cannot
silently disable or shadow it.
"""

import inspect
import json
import re

import moto
from moto.cloudformation import parsing
from moto.cloudformation.exceptions import UnformattedGetAttTemplateException, ValidationError
from moto.cloudformation.utils import random_suffix
from moto.core import serialize
from moto.core.serialize import S3Serializer
from moto.core.common_models import CloudFormationModel
from moto.elasticache.models import ElastiCacheBackend, elasticache_backends
from moto.kms.models import Key as KmsKey
from moto.rds.models import DBParameterGroup, DBSubnetGroup
from moto.s3.models import FakeBucket, S3Backend, s3_backends
from moto.utilities.utils import get_partition

WRITTEN_FOR = "5.2.5"
SUBNET_GROUP = "AWS::ElastiCache::SubnetGroup"
REPLICATION_GROUP = "AWS::ElastiCache::ReplicationGroup"


def _require(condition, what):
    if not condition:
        raise RuntimeError(
            f"hack/moto_extras.py was written for moto {WRITTEN_FOR} and this is moto "
            f"{moto.__version__}: {what}. Adapt or remove the module."
        )


def _check_moto():
    for name in ("get_model_list", "get_model_map", "get_name_type_map"):
        _require(
            hasattr(getattr(parsing, name, None), "cache_clear"),
            f"moto.cloudformation.parsing.{name} is not an lru_cache",
        )
    _require(
        "Fn::GetAZs" in inspect.getsource(parsing.clean_json),
        "moto.cloudformation.parsing.clean_json no longer resolves Fn::GetAZs",
    )
    _require(
        "__subclasses__" in inspect.getsource(parsing.get_model_list),
        "CloudFormation no longer finds its models as CloudFormationModel subclasses",
    )
    modelled = {m.cloudformation_type() for m in CloudFormationModel.__subclasses__()}
    for kind in (SUBNET_GROUP, REPLICATION_GROUP):
        _require(kind not in modelled, f"moto now models {kind} itself")
    for model in (DBSubnetGroup, DBParameterGroup):
        _require(
            not hasattr(model, "physical_resource_id"),
            f"moto's {model.__name__} has a physical_resource_id of its own now",
        )
        _require(isinstance(getattr(model, "name", None), property), f"{model.__name__}.name is gone")
    for method in ("create_from_cloudformation_json", "update_from_cloudformation_json"):
        _require(
            "VersioningConfiguration" not in inspect.getsource(getattr(FakeBucket, method)),
            f"moto's FakeBucket.{method} applies VersioningConfiguration itself now",
        )
    _require(
        'f"{self.operation_model.name}Response"' in inspect.getsource(serialize)
        and hasattr(S3Serializer, "_serialize_body"),
        "S3Serializer no longer names the root element {Operation}Response",
    )
    for method in ("put_bucket_versioning", "put_public_access_block", "put_bucket_ownership_controls"):
        _require(hasattr(S3Backend, method), f"S3Backend.{method} is gone")
    for method in (
        "create_cache_subnet_group",
        "create_replication_group",
        "modify_replication_group",
        "delete_replication_group",
    ):
        _require(hasattr(ElastiCacheBackend, method), f"ElastiCacheBackend.{method} is gone")
    backend = ElastiCacheBackend("us-east-1", "123456789012")
    for attr in ("cache_subnet_groups", "replication_groups"):
        _require(isinstance(getattr(backend, attr, None), dict), f"ElastiCacheBackend.{attr} is gone")


_check_moto()


# moto files every model under the service named by the second part of its module's name
# (`moto.<service>.models`), for its dashboard and its reset.
_MODEL_MODULE = f"{__name__}.elasticache"


def _backend(account_id, region_name):
    return elasticache_backends[account_id][region_name]


def _key(name):
    """`PreferredCacheClusterAZs` and `preferred_cache_cluster_azs` alike: `preferredcacheclusterazs`."""
    return name.replace("_", "").lower()


def _generated_id(stack_id, logical_id):
    """What CloudFormation names a replication group that has no ReplicationGroupId: up to
    40 lowercase letters, digits and single hyphens, from a letter, not ending in one."""
    stack_name = stack_id.split("/")[1] if "/" in stack_id else stack_id
    suffix = random_suffix().lower()
    prefix = re.sub(r"[^a-z0-9]+", "-", f"{stack_name}-{logical_id}".lower()).strip("-")
    if not prefix[:1].isalpha():
        prefix = f"r{prefix}"
    prefix = prefix[: 40 - len(suffix) - 1].rstrip("-")
    return f"{prefix}-{suffix}"


class ElastiCacheSubnetGroup(CloudFormationModel):
    """AWS::ElastiCache::SubnetGroup; `Ref` is its name."""

    __module__ = _MODEL_MODULE

    def __init__(self, group, account_id, region_name):
        self.group = group
        self.account_id = account_id
        self.region_name = region_name

    @staticmethod
    def cloudformation_name_type():
        return "CacheSubnetGroupName"

    @staticmethod
    def cloudformation_type():
        return SUBNET_GROUP

    @classmethod
    def has_cfn_attr(cls, attr):
        return False

    @property
    def physical_resource_id(self):
        return self.group.cache_subnet_group_name

    def get_cfn_attribute(self, attribute_name):
        raise UnformattedGetAttTemplateException()

    def is_created(self):
        return True

    @classmethod
    def _create(cls, name, props, account_id, region_name):
        group = _backend(account_id, region_name).create_cache_subnet_group(
            cache_subnet_group_name=name.lower(),  # ElastiCache keeps names lowercase
            cache_subnet_group_description=props["Description"],
            subnet_ids=props["SubnetIds"],
            tags=props.get("Tags", []),
        )
        return cls(group, account_id, region_name)

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        return cls._create(resource_name, cloudformation_json["Properties"], account_id, region_name)

    @classmethod
    def update_from_cloudformation_json(
        cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name
    ):
        props = cloudformation_json["Properties"]
        name = props.get("CacheSubnetGroupName", original_resource.physical_resource_id)
        if name.lower() == original_resource.physical_resource_id:
            # In place: the same name with the new subnets and description.
            original_resource.delete(account_id, region_name)
            return cls._create(name, props, account_id, region_name)
        # A new name replaces the group.
        new = cls._create(name, props, account_id, region_name)
        original_resource.delete(account_id, region_name)
        return new

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
        _backend(account_id, region_name).cache_subnet_groups.pop(resource_name, None)

    def delete(self, account_id, region_name):
        self.delete_from_cloudformation_json(self.physical_resource_id, None, account_id, region_name)


class ElastiCacheReplicationGroup(CloudFormationModel):
    """AWS::ElastiCache::ReplicationGroup; `Ref` is its id."""

    __module__ = _MODEL_MODULE

    # Defaults where the ElastiCache API handler of moto passes a list, not None.
    LIST_PARAMETERS = (
        "preferred_cache_cluster_azs",
        "node_group_configuration",
        "tags",
        "log_delivery_configurations",
    )

    def __init__(self, group, account_id, region_name):
        self.group = group
        self.account_id = account_id
        self.region_name = region_name

    @staticmethod
    def cloudformation_name_type():
        return "ReplicationGroupId"

    @staticmethod
    def cloudformation_type():
        return REPLICATION_GROUP

    @classmethod
    def has_cfn_attr(cls, attr):
        return attr in {
            f"{endpoint}.{part}"
            for endpoint in ("PrimaryEndPoint", "ReaderEndPoint", "ConfigurationEndPoint")
            for part in ("Address", "Port")
        }

    @property
    def physical_resource_id(self):
        return self.group.replication_group_id

    def get_cfn_attribute(self, attribute_name):
        if not self.has_cfn_attr(attribute_name):
            raise UnformattedGetAttTemplateException()
        endpoint, part = attribute_name.split(".")
        if endpoint == "ConfigurationEndPoint":
            address = getattr(self.group, "configuration_endpoint", {}).get("address")
        else:
            node_group = self.group.node_groups[0]
            address = node_group.get(
                "primary_endpoint_address" if endpoint == "PrimaryEndPoint" else "reader_endpoint_address"
            )
        if address is None:
            # Primary and reader endpoints exist with cluster mode disabled, the
            # configuration endpoint with it enabled; CloudFormation refuses the others.
            raise UnformattedGetAttTemplateException()
        # CloudFormation gives the port as a string.
        return address if part == "Address" else str(self.group.port)

    def is_created(self):
        return True

    @classmethod
    def _create(cls, group_id, props, account_id, region_name):
        props = {**props, "ReplicationGroupId": group_id.lower()}  # ElastiCache keeps ids lowercase
        # Every parameter of the backend's create, from the property of the same name.
        parameters = [p for p in inspect.signature(ElastiCacheBackend.create_replication_group).parameters if p != "self"]
        by_key = {_key(p): p for p in parameters}
        unknown = sorted(k for k in props if _key(k) not in by_key)
        if unknown:
            raise ValidationError(
                message=f"hack/moto_extras.py: {REPLICATION_GROUP} properties not modelled: {', '.join(unknown)}"
            )
        arguments = {p: ([] if p in cls.LIST_PARAMETERS else None) for p in parameters}
        arguments.update({by_key[_key(k)]: v for k, v in props.items()})
        group = _backend(account_id, region_name).create_replication_group(**arguments)
        return cls(group, account_id, region_name)

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        props = cloudformation_json["Properties"]
        group_id = props.get("ReplicationGroupId") or _generated_id(kwargs["StackId"], kwargs["LogicalId"])
        return cls._create(group_id, props, account_id, region_name)

    @classmethod
    def update_from_cloudformation_json(
        cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name
    ):
        props = cloudformation_json["Properties"]
        group_id = props.get("ReplicationGroupId", original_resource.physical_resource_id).lower()
        if group_id != original_resource.physical_resource_id:
            # A new id replaces the group.
            new = cls._create(group_id, props, account_id, region_name)
            original_resource.delete(account_id, region_name)
            return new
        # In place, through what moto's ModifyReplicationGroup takes (the node type, the
        # replicas' failover, the description, ...); the endpoints stay.
        _backend(account_id, region_name).modify_replication_group(
            replication_group_id=group_id,
            replication_group_description=props.get("ReplicationGroupDescription"),
            engine=props.get("Engine"),
            cache_node_type=props.get("CacheNodeType"),
            automatic_failover_enabled=props.get("AutomaticFailoverEnabled"),
            multi_az_enabled=props.get("MultiAZEnabled"),
            snapshot_retention_limit=props.get("SnapshotRetentionLimit"),
        )
        return original_resource

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
        backend = _backend(account_id, region_name)
        if resource_name in backend.replication_groups:
            backend.delete_replication_group(resource_name, retain_primary_cluster=False)
            # moto keeps a deleted group as "deleting" for ever; AWS removes it, and
            # CloudFormation waits for that.
            backend.replication_groups.pop(resource_name, None)

    def delete(self, account_id, region_name):
        self.delete_from_cloudformation_json(self.physical_resource_id, None, account_id, region_name)


for _model in (DBSubnetGroup, DBParameterGroup):
    _model.physical_resource_id = property(lambda self: self.name)

def _apply_bucket_settings(bucket, cloudformation_json, account_id, region_name):
    props = cloudformation_json.get("Properties", {})
    backend = s3_backends[account_id][get_partition(region_name)]
    if "VersioningConfiguration" in props:
        backend.put_bucket_versioning(bucket.name, props["VersioningConfiguration"]["Status"])
    if "PublicAccessBlockConfiguration" in props:
        backend.put_public_access_block(bucket.name, props["PublicAccessBlockConfiguration"])
    for rule in props.get("OwnershipControls", {}).get("Rules", [])[:1]:
        backend.put_bucket_ownership_controls(bucket.name, rule["ObjectOwnership"])
    return bucket


_moto_bucket_create = FakeBucket.create_from_cloudformation_json
_moto_bucket_update = FakeBucket.update_from_cloudformation_json


def _bucket_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    bucket = _moto_bucket_create(resource_name, cloudformation_json, account_id, region_name, **kwargs)
    return _apply_bucket_settings(bucket, cloudformation_json, account_id, region_name)


def _bucket_update(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
    bucket = _moto_bucket_update(original_resource, new_resource_name, cloudformation_json, account_id, region_name)
    return _apply_bucket_settings(bucket, cloudformation_json, account_id, region_name)


FakeBucket.create_from_cloudformation_json = classmethod(_bucket_create)
FakeBucket.update_from_cloudformation_json = classmethod(_bucket_update)

_moto_s3_body = S3Serializer._serialize_body


def _s3_body(self, body):
    if self.operation_model.name == "GetBucketVersioning" and "GetBucketVersioningResponse" in body:
        body = {"VersioningConfiguration": body["GetBucketVersioningResponse"]}
    return _moto_s3_body(self, body)


S3Serializer._serialize_body = _s3_body

_moto_clean_json = parsing.clean_json


def _clean_json(resource_json, resources_map):
    """moto's `clean_json` (which resolves every intrinsic function, recursing through the
    module's name, so through this), except that `Fn::GetAZs` is answered in the region."""
    if isinstance(resource_json, dict) and "Fn::GetAZs" in resource_json:
        region = _clean_json(resource_json["Fn::GetAZs"], resources_map) or resources_map["AWS::Region"]
        # The same four zones moto gives, of the right region.
        return [f"{region}{zone}" for zone in "abcd"]
    return _moto_clean_json(resource_json, resources_map)


parsing.clean_json = _clean_json

_moto_key_create = KmsKey.create_from_cloudformation_json


def _key_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    properties = cloudformation_json.get("Properties", {})
    if isinstance(properties.get("KeyPolicy"), dict):
        properties = {**properties, "KeyPolicy": json.dumps(properties["KeyPolicy"])}
        cloudformation_json = {**cloudformation_json, "Properties": properties}
    return _moto_key_create(resource_name, cloudformation_json, account_id, region_name, **kwargs)


import moto.kms.policy_validator  # noqa: E402  (checked below, before patching)

_require(
    "json.loads(key.policy)" in inspect.getsource(moto.kms.policy_validator),
    "moto's KMS no longer reads key policies as JSON strings",
)
KmsKey.create_from_cloudformation_json = classmethod(_key_create)

# In case anything asked for the models already: the next request sees these two.
for _cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
    _cached.cache_clear()
_require(
    {ElastiCacheSubnetGroup, ElastiCacheReplicationGroup} <= set(CloudFormationModel.__subclasses__()),
    "the models did not register",
)
