"""`make demo`: the "existing" network of examples/clinic.yaml, made in the local moto.

The example names a VPC, two subnets and the cluster's security group that exist in a real
account; moto starts empty, so this creates their stand-ins (a VPC, a subnet in each of two
zones, a security group) and prints their ids as `vpc subnet subnet security-group`.
"""

import os

import boto3

ec2 = boto3.client(
    "ec2",
    region_name="us-east-1",
    endpoint_url=os.environ["AWS_ENDPOINT_URL"],
)
vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
subnets = [
    ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]
    for cidr, zone in (("10.42.0.0/20", "us-east-1a"), ("10.42.16.0/20", "us-east-1b"))
]
group = ec2.create_security_group(
    GroupName="demo-cluster-nodes", Description="the cluster's nodes", VpcId=vpc
)["GroupId"]
print(vpc, *subnets, group)
